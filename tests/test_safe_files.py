"""No code runs from a file a user receives: sets, checkpoints and memories load with
weights_only=True, and a crafted pickle is refused in one line."""
import json
import pathlib

import pytest
import torch
from click.testing import CliRunner

from ccl.cli import main
from ccl.experiment import make_config, prepare
from ccl.runner import resume_run, run


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


@pytest.mark.parametrize("memory", ["avalanche-reservoir", "reservoir", "herding"])
def test_resume_from_a_tensor_only_checkpoint_gives_the_same_numbers(tmp_path, tiny_run, memory, interrupted_run):
    # The checkpoint holds the metrics' and generators' states as plain values (no pickled
    # Avalanche objects); resuming from it must change nothing, forgetting included.
    full = run(prepare(make_config(**tiny_run, memory=memory)), tmp_path / "full", progress=False)
    cut = interrupted_run(prepare(make_config(**tiny_run, memory=memory)), tmp_path / "cut", after=1)
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


def test_resume_on_changed_data_refuses_and_leftovers_are_cleaned(tmp_path):
    from test_data import write_class_folders

    data = tmp_path / "data"
    write_class_folders(data, ["a", "b", "c", "d"], 12, size=(8, 8))
    args = ["run", "--scenario", "split-folder", "--data-dir", str(data), "--experiences", "2", "--epochs", "1",
            "--mem-size", "8", "--width", "8", "--quiet", "--runs-dir", str(tmp_path / "runs")]
    assert CliRunner().invoke(main, args).exit_code == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    (run_dir / "status.json").write_text(json.dumps({"status": "interrupted"}))
    (run_dir / "results.json").unlink()
    (run_dir / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    from PIL import Image
    import numpy as np
    import shutil

    extra = [data / "train" / "a" / f"extra{i}.png" for i in range(2)]
    for path in extra:  # two more images of class a
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
    shutil.rmtree(data / ".ccl-cache", ignore_errors=True)
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 2 and "the data changed since the run started" in result.output
    assert result.output.count("\n") == 1
    for path in extra:  # the data as it was: the resume goes on, and cleans what a kill left
        path.unlink()
    shutil.rmtree(data / ".ccl-cache", ignore_errors=True)
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert not list(run_dir.glob(".*.tmp"))


@pytest.mark.parametrize("images, labels, message", [
    (torch.zeros(2, 8, 8), torch.tensor([0, 1]), "non-empty (N, C, H, W)"),
    (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), "non-empty (N, C, H, W)"),
    (torch.zeros(2, 1, 8, 8), torch.tensor([0, 1, 1]), "labels must be N=2"),
    (torch.full((2, 1, 8, 8), float("nan")), torch.tensor([0, 1]), "NaN or inf"),
    (torch.zeros(2, 1, 8, 8), torch.tensor([0, 12]), "do not fit digits"),
    (torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]), "do not fit digits"),
])
def test_malformed_sets_are_one_line_errors(tmp_path, images, labels, message):
    path = tmp_path / "set.pt"
    torch.save({"images": images, "labels": labels, "dataset": "digits"}, path)
    result = CliRunner().invoke(main, ["evaluate", str(path), "--epochs", "1", "--networks", "1"])
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1


def test_written_files_get_the_users_usual_mode(tmp_path):
    import os
    import stat
    from ccl.io import save_torch, write_json
    mask = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        save_torch(tmp_path / "b.pt", {"x": torch.zeros(1)})
        plain = tmp_path / "c.txt"
        plain.write_text("x")  # what an ordinary open() gives
    finally:
        os.umask(mask)
    modes = {stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("a.json", "b.pt")}
    assert modes == {stat.S_IMODE(plain.stat().st_mode)} == {0o640}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tiny = dict(scenario="split-digits", epochs=1, train_per_class=20, mem_size=20, mem_batch=8, width=16,
                batch_size=16)
    return run(prepare(make_config(**tiny)), tmp_path_factory.mktemp("runs"), progress=False)


@pytest.mark.parametrize("name, content, problem", [
    ("results.json", "{}", "memory is missing"),
    ("results.json", "[]", "should be a JSON object, not list"),
    ("results.json", '{"memory": "random", "seed": 0, "final_average_accuracy": "x"}', "should be a number"),
    ("status.json", "[]", "should be a JSON object, not list"),
    ("config.json", '{"run": {"memory": "random", "seed": "0"}}', "run.seed should be int"),
])
def test_json_of_the_wrong_shape_is_one_line(tmp_path, finished_run, name, content, problem):
    import shutil
    run_dir = tmp_path / "runs" / finished_run.name
    shutil.copytree(finished_run, run_dir)
    (run_dir / name).write_text(content)
    if name == "config.json":
        (run_dir / "status.json").write_text('{"status": "interrupted"}')
    resume = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
    assert resume.exit_code == 2 and resume.output.startswith(f"error: {run_dir / name}: not what ccl wrote")
    assert problem in resume.output and len(resume.output.strip().splitlines()) == 1
    report = CliRunner().invoke(main, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    assert "Traceback" not in report.output and report.exception is None or isinstance(report.exception, SystemExit)


def test_bad_paths_are_one_line_before_any_work(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for args, message in ((["run", "--runs-dir", str(a_file)], f"--runs-dir {a_file}: is a file, not a folder"),
                          (["run", "--runs-dir", str(a_file / "sub")], f"cannot create it ({a_file} is a file)"),
                          (["compare", "--memory", "random", "--seeds", "1", "--out", str(a_file)],
                           f"--out {a_file}: is a file, not a folder")):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and result.output.strip().splitlines() == [f"error: {result.output[7:].strip()}"]
        assert message in result.output, result.output


def test_a_full_disk_is_one_line_and_the_run_is_marked_failed(tmp_path, monkeypatch):
    import errno
    import ccl.runner
    real_save = ccl.runner.save_torch

    def full(path, obj):
        if pathlib.Path(path).name == "checkpoint.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(path, obj)

    monkeypatch.setattr(ccl.runner, "save_torch", full)
    result = CliRunner().invoke(main, ["run", "--train-per-class", "10", "--epochs", "1", "--mem-size", "20",
                                       "--width", "8", "--quiet", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and result.output.strip().endswith("checkpoint.pt: No space left on device")
    assert result.output.strip().splitlines()[-1].startswith("error: ")
    (run_dir,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    assert not (run_dir / "results.json").exists()


def test_wandb_is_not_imported_without_wandb(tmp_path):
    import os
    import subprocess
    import sys
    # a run in a fresh process, ended as kill -9 would (no exit handlers): nothing in TMPDIR
    code = ("import os, sys\n"
            "from ccl.experiment import make_config, prepare\n"
            "from ccl.runner import run\n"
            "run(prepare(make_config(scenario='split-digits', epochs=1, train_per_class=10, mem_size=20,"
            " width=8)), sys.argv[1], progress=False)\n"
            "print(type(sys.modules.get('wandb')).__name__, flush=True)\n"
            "os._exit(0)\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "runs")], capture_output=True, text=True,
                         env={**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(pathlib.Path(__file__).parent.parent)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] in ("_ImportedOnUse", "NoneType")  # not the real module
    assert not [p.name for p in tmp.iterdir() if "wandb" in p.name]


def test_wandb_stand_in_answers_find_spec():
    """accelerate (imported by torchmetrics through transformers, where installed) asks
    importlib.util.find_spec("wandb"): the stand-in must answer it, not raise ValueError."""
    import subprocess
    import sys
    code = ("import importlib.util, sys, ccl\n"
            "stand_in = sys.modules.get('wandb')\n"
            "spec = importlib.util.find_spec('wandb') if stand_in is not None else None\n"
            "print(type(stand_in).__name__, spec is not None and spec.name)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=pathlib.Path(__file__).parent.parent)
    assert out.returncode == 0, out.stderr
    kind, name = out.stdout.split()
    assert (kind, name) in (("_ImportedOnUse", "wandb"), ("NoneType", "False"))  # NoneType: wandb not installed
