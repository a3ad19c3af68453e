"""How well a run's time estimate holds: runs `ccl run` under a pseudo-terminal (so its
progress bar draws, with the whole run's estimate beside it), notes the estimate the bar
showed at AT seconds (the last one before AT, or before the end for a shorter run), and
prints it against the run's actual wall time.

    python benchmarks/estimate_accuracy.py --data-dir DATA [--at 120] [--runs-dir DIR] ["RUN ARGS" ...]

Each quoted argument is one run's `ccl run` arguments; with none, five runs of different
shapes at the CPU presets. Run it on an otherwise idle machine: the estimate measures the
machine as the run finds it.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import pty
import re
import select
import shlex
import struct
import subprocess
import sys
import tempfile
import termios
import time

SHAPES = ["--config cpu-protocol --memory herding",
          "--config cpu-protocol --memory datadam",
          "--config cpu-protocol --memory herding --strategy gdumb",
          "--config cpu-quick --memory pad",
          "--config cpu-protocol --memory reservoir --strategy der++"]
BAR = re.compile(r"run: (\S+) left of (\S+?)[,\s]")


def seconds(text: str) -> float:
    """'4.5s', '45s', '8m', '1h12m' (ccl.units.duration, compact) in seconds."""
    h = re.search(r"(\d+)h", text)
    m = re.search(r"(\d+)m", text)
    s = re.search(r"([\d.]+)s", text)
    return sum(float(x.group(1)) * k for x, k in ((h, 3600), (m, 60), (s, 1)) if x)


def measure(args: str, data_dir: str, runs_dir: str, at: float) -> tuple[float | None, float, int]:
    """(the whole run's estimate shown last before `at` seconds, the actual seconds, exit code)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))  # a terminal of 200 columns
    command = [sys.executable, "-m", "ccl.cli", "run", *shlex.split(args), "--data-dir", data_dir,
               "--runs-dir", runs_dir]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=follower, stderr=follower, env={**os.environ, "COLUMNS": "200"})
    os.close(follower)
    estimate, text = None, ""
    while True:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536).decode(errors="replace")
            except OSError:  # the run closed its terminal
                break
            if not chunk:
                break
            text = (text + chunk)[-4096:]
            if time.perf_counter() - start <= at:
                found = BAR.findall(text)
                if found:
                    estimate = seconds(found[-1][1])
        elif process.poll() is not None:
            break
    code = process.wait()
    return estimate, time.perf_counter() - start, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", default=SHAPES)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--at", type=float, default=120.0, help="seconds into the run the estimate is read")
    parser.add_argument("--runs-dir", default=None)
    options = parser.parse_args()
    runs_dir = options.runs_dir or tempfile.mkdtemp(prefix="ccl-estimates-")
    print(f"| run | estimate at {options.at:.0f} s | actual | estimate / actual |")
    print("|---|---|---|---|")
    for args in options.runs:
        estimate, actual, code = measure(args, options.data_dir, runs_dir, options.at)
        ratio = f"{estimate / actual:.2f}" if estimate else "-"
        note = "" if code == 0 else f" (exit {code})"
        shown = f"{estimate:.0f} s" if estimate else "none shown"
        print(f"| `{args}` | {shown} | {actual:.0f} s{note} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
