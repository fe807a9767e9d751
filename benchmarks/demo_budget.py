"""Does ``finedefics demo`` fit its budget? Wall time and peak memory of one real run, measured from outside.

Runs the command as a child process (the same way a user does), samples the resident memory of its whole
process tree every ``--interval`` seconds, and reports the wall time and the peak. Exit status 1 when either
exceeds its budget (default: 10 minutes, 4 GiB, the default demo's targets on a 2-core machine).

    python benchmarks/demo_budget.py --output budget.json -- finedefics demo --output-dir /tmp/demo
    python benchmarks/demo_budget.py --minutes 60 -- finedefics demo --ablations --output-dir /tmp/ablations

The peak is sampled, so a spike shorter than the interval can be missed; the default 0.5 s is well below the
length of any training or evaluation phase.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

GIB = 1024 ** 3


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of ``process`` and all its descendants (0 for those that ended meanwhile)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(command: list[str], interval: float) -> dict:
    started = time.monotonic()
    child = subprocess.Popen(command)
    watched, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, tree_rss(watched))
        except psutil.Error:
            pass
        time.sleep(interval)
    return {"command": command, "returncode": child.returncode, "seconds": round(time.monotonic() - started, 1),
            "peak_rss_gib": round(peak / GIB, 3), "sample_interval_s": interval}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-time budget (default 10)")
    parser.add_argument("--gib", type=float, default=4.0, help="peak resident memory budget in GiB (default 4)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--output", type=Path, default=None, help="write the measurement as JSON here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to measure, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --, e.g. -- finedefics demo")
    result = measure(command, args.interval)
    result["budget"] = {"minutes": args.minutes, "gib": args.gib}
    result["within_budget"] = (result["returncode"] == 0 and result["seconds"] <= 60 * args.minutes
                               and result["peak_rss_gib"] <= args.gib)
    print(json.dumps(result, indent=1))
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
