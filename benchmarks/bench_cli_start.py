"""How long the command line takes to answer what needs no data: `ccl --help`, `ccl list`
and a misspelt memory (`ccl run --memory typo`), each as a fresh process, as a user types
it. Issue 46's target: `ccl list` and `ccl run --memory typo` answer within 1 s of `ccl
--help`, so neither may import torch or Avalanche; for scale, the script also times the
import of the registries that `ccl list` read before (torch, torchvision and Avalanche).

    python benchmarks/bench_cli_start.py [--repeats 5] [--no-scale]

The figure is each command's wall time (median and fastest of the repeats, after one
unmeasured start that warms the file cache); the machine's other load counts in it, so
compare figures from one invocation.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "ccl --help": ["--help"],
    "ccl list": ["list"],
    "ccl run --memory typo": ["run", "--memory", "typo"],
}
TARGET_GAP = 1.0  # seconds beyond `ccl --help` (issue 46)
SCALE = "import ccl.data.scenarios, ccl.memory, ccl.strategies"  # what `ccl list` imported before


def wall_seconds(argv: list[str], cwd: str) -> float:
    """Wall time of one fresh process running `argv` to its end (its output discarded)."""
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="measured runs of each command")
    parser.add_argument("--no-scale", action="store_true", help="skip timing the heavy import (it takes seconds)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    runs = {name: [sys.executable, "-m", "ccl.cli", *flags] for name, flags in COMMANDS.items()}
    if not args.no_scale:
        runs[f"python -c '{SCALE}'"] = [sys.executable, "-c", SCALE]
    medians = {}
    with tempfile.TemporaryDirectory() as cwd:  # `ccl run` refuses before making runs/, but not in the caller's folder
        for name, argv in runs.items():
            wall_seconds(argv, cwd)  # warm-up: the first start reads the files from disk
            times = [wall_seconds(argv, cwd) for _ in range(args.repeats)]
            medians[name] = statistics.median(times)
            print(f"{name:<60} median {medians[name]:6.2f} s   fastest {min(times):6.2f} s   ({args.repeats} runs)")
    base = medians["ccl --help"]
    for name in ("ccl list", "ccl run --memory typo"):
        gap = medians[name] - base
        verdict = "within" if gap <= TARGET_GAP else "NOT within"
        print(f"{name}: {gap:+.2f} s beyond `ccl --help` ({verdict} the {TARGET_GAP:.0f} s target)")


if __name__ == "__main__":
    main()
