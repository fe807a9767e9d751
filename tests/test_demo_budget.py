"""benchmarks/demo_budget.py measures a real child process: its wall time, the peak memory of its process tree,
and whether both fit the budget (exit status 1 when not)."""

import importlib.util
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _budget_module():
    spec = importlib.util.spec_from_file_location("demo_budget", REPO_ROOT / "benchmarks" / "demo_budget.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A child that holds ~300 MiB in a grandchild process for a second: the peak must count the whole tree.
CHILD = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
         "'import time; block = bytearray(300 * 1024 * 1024); time.sleep(1.5)'], check=True)")


def test_peak_memory_counts_the_process_tree_and_the_budget_decides_the_exit_status(tmp_path):
    budget = _budget_module()
    output = tmp_path / "budget.json"
    assert budget.main(["--gib", "4", "--minutes", "5", "--interval", "0.1", "--output", str(output), "--",
                        sys.executable, "-c", CHILD]) == 0
    result = json.loads(output.read_text())
    assert result["returncode"] == 0 and result["within_budget"]
    assert 0.28 <= result["peak_rss_gib"] < 1.0
    assert result["seconds"] >= 1.5
    # The same run against a 0.1 GiB budget is over it; a failing command is never within budget.
    assert budget.main(["--gib", "0.1", "--interval", "0.1", "--", sys.executable, "-c", CHILD]) == 1
    assert budget.main(["--", sys.executable, "-c", "raise SystemExit(3)"]) == 1
