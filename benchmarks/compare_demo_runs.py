"""Compare two `finedefics demo` output folders prediction by prediction.

    python benchmarks/compare_demo_runs.py OLD_DEMO_DIR NEW_DEMO_DIR

For every model report present in both (``report/base``, ``report/seed-N/<variant>``) and every scoring mode,
prints whether the predicted answers are identical, and the accuracies. Exits 1 if any prediction differs:
what "every prediction identical to the stored run" in the README is checked with after a change to training
or evaluation code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def predictions(report_dir: Path) -> dict[str, list]:
    """``{mode: [predicted answer per question]}`` from a model's ``predictions-<mode>.json`` files."""
    found = {}
    for path in sorted(report_dir.glob("predictions-*.json")):
        records = json.loads(path.read_text(encoding="utf-8"))["predictions"]
        found[path.stem.removeprefix("predictions-")] = [record.get("predicted") for record in records]
    return found


def model_dirs(demo_dir: Path) -> dict[str, Path]:
    report = demo_dir / "report"
    return {str(path.parent.relative_to(report)): path.parent for path in sorted(report.rglob("predictions-*.json"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args(argv)
    old, new = model_dirs(args.old), model_dirs(args.new)
    common = sorted(set(old) & set(new))
    if not common:
        print(f"no model report in common between {args.old} and {args.new}", file=sys.stderr)
        return 2
    differing = 0
    for name in common:
        before, after = predictions(old[name]), predictions(new[name])
        for mode in sorted(set(before) & set(after)):
            same = before[mode] == after[mode]
            differing += not same
            correct = json.loads((new[name] / "report.json").read_text())["modes"][mode]["accuracy"]
            print(f"{name:32s} {mode:10s} {'identical' if same else 'DIFFERENT'}  "
                  f"({len(after[mode])} questions, accuracy {100 * correct:.1f})")
    print(f"{differing} of the compared prediction lists differ")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
