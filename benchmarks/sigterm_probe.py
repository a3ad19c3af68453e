"""SIGTERM during checkpoint writes: how many are honoured (the run stops, its status says
interrupted, the checkpoint being written is whole, and the resumed run finishes).

Each trial starts a small split-digits run with a wide learner (a checkpoint of tens of
MB, so a write takes a while), waits for a checkpoint's temporary file to appear, sends
SIGTERM at once, and checks what the run left.

    python benchmarks/sigterm_probe.py --trials 13
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def trial(root: Path, width: int) -> tuple[bool, str]:
    runs = root / "runs"
    cmd = [sys.executable, "-m", "ccl.cli", "run", "--scenario", "split-digits", "--epochs", "1", "--width", str(width),
           "--train-per-class", "20", "--mem-size", "20", "--quiet", "--runs-dir", str(runs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, sent_during = time.time() + 300, None
    while proc.poll() is None and time.time() < deadline:
        tmp = list(runs.glob("*/.checkpoint.pt.*.tmp"))
        if tmp:
            proc.send_signal(signal.SIGTERM)
            sent_during = tmp[0]
            break
        time.sleep(0.002)
    proc.wait(timeout=300)
    if sent_during is None:
        return False, "no checkpoint write was caught (the run ended first)"
    run_dir = sent_during.parent
    state = json.loads((run_dir / "status.json").read_text())["status"]
    if proc.returncode != 128 + signal.SIGTERM or state != "interrupted":
        return False, f"exit {proc.returncode}, status {state}: the signal was not honoured"
    if list(run_dir.glob(".checkpoint.pt.*.tmp")):
        return False, "a temporary checkpoint was left: the write was aborted"
    done = torch.load(run_dir / "checkpoint.pt", weights_only=True)["experience"]
    resumed = subprocess.run([sys.executable, "-m", "ccl.cli", "run", "--resume", str(run_dir), "--quiet"],
                             capture_output=True, text=True)
    if resumed.returncode != 0:
        return False, f"the resume failed: {resumed.stderr.strip().splitlines()[-1:]}"
    return True, f"stopped after experience {done}'s checkpoint; resumed to the end"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=13)
    parser.add_argument("--width", type=int, default=512, help="learner width (checkpoint size)")
    args = parser.parse_args()
    honoured = 0
    for i in range(args.trials):
        with tempfile.TemporaryDirectory() as root:
            ok, what = trial(Path(root), args.width)
        honoured += ok
        print(f"trial {i + 1}: {'honoured' if ok else 'LOST'}: {what}", flush=True)
    print(f"honoured {honoured} of {args.trials}")


if __name__ == "__main__":
    main()
