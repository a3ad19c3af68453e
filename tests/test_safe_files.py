"""No code runs from a file a user receives: sets, checkpoints and memories load with
weights_only=True, and a crafted pickle is refused in one line."""
import json
import pathlib

import pytest
import torch
from click.testing import CliRunner

from ccl.cli import main
from ccl.runner import make_config, prepare, resume_run, run


class _Payload:
    """Unpickling this object calls Path.touch(marker): the code a crafted file would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_a_crafted_set_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "set.pt"
    torch.save({"images": torch.zeros(2, 1, 8, 8), "labels": torch.tensor([0, 1]), "dataset": "digits",
                "payload": _Payload(marker)}, crafted)
    result = CliRunner().invoke(main, ["evaluate", str(crafted), "--epochs", "1", "--networks", "1"])
    assert result.exit_code == 2 and not marker.exists()
    assert "refusing to load" in result.output and result.output.count("\n") == 1


def test_a_crafted_checkpoint_runs_no_code(tmp_path, tiny_run):
    run_dir = run(prepare(make_config(**tiny_run, experiences=2)), tmp_path, progress=False)
    (run_dir / "status.json").write_text(json.dumps({"status": "interrupted"}))
    (run_dir / "results.json").unlink()
    marker = tmp_path / "pwned"
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    torch.save({**ckpt, "payload": _Payload(marker)}, run_dir / "checkpoint.pt")
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 2 and not marker.exists()
    assert "refusing to load" in result.output and result.output.count("\n") == 1


class _Stop(Exception):
    pass


@pytest.mark.parametrize("memory", ["reservoir", "herding"])
def test_resume_from_a_tensor_only_checkpoint_gives_the_same_numbers(tmp_path, tiny_run, memory):
    # The checkpoint holds the metrics' and generators' states as plain values (no pickled
    # Avalanche objects); resuming from it must change nothing, forgetting included.
    full = run(prepare(make_config(**tiny_run, memory=memory)), tmp_path / "full", progress=False)

    def stop_after_second(i, results):
        if i == 1:
            raise _Stop

    with pytest.raises(_Stop):
        run(prepare(make_config(**tiny_run, memory=memory)), tmp_path / "cut", progress=False,
            on_experience=stop_after_second)
    (cut,) = (tmp_path / "cut").iterdir()
    resume_run(cut, progress=False)
    a, b = (json.loads((d / "results.json").read_text()) for d in (full, cut))
    for key in ("accuracy_matrix", "forgetting", "bwt", "average_accuracy"):
        assert a[key] == b[key], key


def test_a_second_writer_is_refused_and_a_dead_holder_never_blocks(tmp_path, tiny_run):
    import os
    import subprocess
    import sys

    from ccl.cli_compare import compare
    from ccl.io import folder_lock

    run_dir = run(prepare(make_config(**tiny_run, experiences=2)), tmp_path, progress=False)
    (run_dir / "status.json").write_text(json.dumps({"status": "interrupted"}))
    (run_dir / "results.json").unlink()
    with folder_lock(run_dir, "a test"):  # another open file description: a second writer
        result = CliRunner().invoke(main, ["run", "--resume", str(run_dir)])
        assert result.exit_code == 2 and f"in use by another ccl process (pid {os.getpid()}" in result.output
        out = tmp_path / "cmp"
        with folder_lock(out, "a test"):
            result = CliRunner().invoke(compare, ["--memory", "random", "--seeds", "1", "--out", str(out),
                                                  "--scenario", "split-digits", "--epochs", "1"])
            assert result.exit_code == 2 and "in use by another ccl process" in result.output
            assert not (out / "cells").exists()
    # A holder killed with SIGKILL leaves its lock file behind, and it does not block.
    code = f"import os; from ccl.io import folder_lock; folder_lock({str(run_dir)!r}, 'x').__enter__(); os.kill(os.getpid(), 9)"
    subprocess.run([sys.executable, "-c", code], check=False)
    assert (run_dir / ".ccl.lock").exists()
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
