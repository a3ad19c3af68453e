"""A run killed mid-way (a real subprocess, SIGTERM or SIGKILL) resumes to the same numbers."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ccl.cli import main
from ccl.experiment import make_config, prepare
from ccl.runner import run

ARGS = ["--scenario", "split-digits", "--memory", "herding", "--epochs", "4", "--train-per-class", "40",
        "--mem-size", "20", "--width", "16", "--seed", "2", "--quiet"]
ROOT = Path(__file__).resolve().parent.parent


def start(runs_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "ccl.cli", "run", *ARGS, "--runs-dir", str(runs_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def wait_for_experience(runs_dir: Path, proc: subprocess.Popen, experience: int) -> Path:
    """Poll the checkpoint until `experience` has completed; returns the run folder."""
    deadline = time.time() + 240
    while time.time() < deadline:
        assert proc.poll() is None, f"run ended before it could be killed:\n{proc.stdout.read()}"
        for ckpt in runs_dir.glob("*/checkpoint.pt"):
            try:
                if torch.load(ckpt, weights_only=True)["experience"] >= experience:
                    return ckpt.parent
            except Exception:
                pass  # being replaced right now
        time.sleep(0.2)
    pytest.fail("run did not reach the experience in time")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cfg = dict(zip([a.lstrip("-").replace("-", "_") for a in ARGS[0:-1:2]], ARGS[1:-1:2]))
    cfg = {k: (int(v) if v.isdigit() else v) for k, v in cfg.items()}
    run_dir = run(prepare(make_config(**cfg)), tmp_path_factory.mktemp("full"), progress=False)
    return {**json.loads((run_dir / "results.json").read_text()), "csv": csv_keys(run_dir)}


def csv_keys(run_dir: Path) -> dict[str, list[str]]:
    """Each CSV log's rows by their experience and epoch columns (values vary with timing)."""
    return {name: [",".join(line.split(",")[:2]) for line in (run_dir / "logs" / name).read_text().splitlines()]
            for name in ("training_results.csv", "eval_results.csv")}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_run_resumes_to_the_same_results(tmp_path, uninterrupted, sig):
    proc = start(tmp_path)
    run_dir = wait_for_experience(tmp_path, proc, 1)
    log = run_dir / "logs" / "training_results.csv"
    deadline = time.time() + 60  # into experience 2: its first epoch's CSV row is written
    while "\n2," not in log.read_text() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    state = json.loads((run_dir / "status.json").read_text())["status"]
    if sig == signal.SIGTERM:
        assert state == "interrupted" and f"resume with: ccl run --resume {run_dir}" in out
    assert not (run_dir / "results.json").exists()

    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    resumed = json.loads((run_dir / "results.json").read_text())
    for key in ("accuracy_matrix", "average_accuracy", "forgetting", "bwt", "final_average_accuracy"):
        assert resumed[key] == uninterrupted[key], key
    assert csv_keys(run_dir) == uninterrupted["csv"]  # the repeated experience's rows are not doubled
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"

    again = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
    assert again.exit_code == 0 and "already finished" in again.output


def test_corrupt_checkpoint_and_results_name_the_file(tmp_path, tiny_run):
    run_dir = run(prepare(make_config(**tiny_run)), tmp_path, progress=False)
    (run_dir / "results.json").write_text('{"accuracy_matrix": [[0.5')
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 2 and f"{run_dir / 'results.json'}: corrupt or truncated JSON" in result.output
    (run_dir / "results.json").unlink()
    (run_dir / "checkpoint.pt").write_bytes((run_dir / "checkpoint.pt").read_bytes()[:1000])
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 2 and f"{run_dir / 'checkpoint.pt'}: corrupt or truncated checkpoint" in result.output
    assert result.output.count("\n") == 1


def test_resume_of_something_else_is_an_error(tmp_path):
    result = CliRunner().invoke(main, ["run", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in result.output
