"""Nothing outside a run or comparison folder is touched through a link, one writer never
hurts another, a signal during a checkpoint write is honoured after it, a diverged run
says so, and deep or odd input is one line."""
import json
import re
import signal

import pytest
from click.testing import CliRunner

from ccl.cli import main
from ccl.errors import CclError
from ccl.io import folder_lock
from ccl.guards import Interrupted, signals_deferred, signals_raise_interrupted
from ccl.experiment import make_config, prepare
from ccl.runner import resume_run


def _stopped_run(tmp_path, tiny_run, interrupted_run):
    return interrupted_run(prepare(make_config(**tiny_run)), tmp_path / "runs", after=1)


def test_a_linked_lock_logs_or_cells_folder_is_refused_and_the_outside_file_untouched(tmp_path, tiny_run,
                                                                                     interrupted_run):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    run_dir = _stopped_run(tmp_path, tiny_run, interrupted_run)
    for target in (run_dir / ".ccl.lock", run_dir / "logs" / "eval_results.csv"):
        saved = target.with_name(target.name + ".saved")
        target.rename(saved)
        target.symlink_to(outside)
        with pytest.raises(CclError, match="symbolic link"):
            resume_run(run_dir, progress=False)
        assert outside.read_text() == "precious\n"
        target.unlink()
        saved.rename(target)
    resume_run(run_dir, progress=False)  # links gone: it resumes

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "random-s0" / "keep").mkdir(parents=True)
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "cells").symlink_to(elsewhere)
    result = CliRunner().invoke(main, ["compare", "--scenario", "split-digits", "--memory", "random", "--seeds", "1",
                                       "--epochs", "1", "--train-per-class", "20", "--mem-size", "20", "--width", "8",
                                       "--out", str(out), "--quiet"])
    assert result.exit_code == 2 and "symbolic link" in result.output
    assert (elsewhere / "random-s0" / "keep").is_dir()


def test_a_refused_second_resume_leaves_the_first_writers_files_alone(tmp_path, tiny_run, interrupted_run):
    run_dir = _stopped_run(tmp_path, tiny_run, interrupted_run)
    in_progress = run_dir / ".checkpoint.pt.xyz.tmp"  # the holder's checkpoint being written
    in_progress.write_bytes(b"half")
    with folder_lock(run_dir, "a test"):
        with pytest.raises(CclError, match="in use by another ccl process"):
            resume_run(run_dir, progress=False)
        assert in_progress.exists()


def test_a_comparison_leaves_a_cell_another_process_is_writing(tmp_path):
    from ccl.compare import CellSpec, run_cell
    folder = tmp_path / "cells" / "random-s0"
    held = folder / "20260101-000000-split-digits-random-s0"
    held.mkdir(parents=True)
    (held / "config.json").write_text("{}")
    with folder_lock(held, "a test"):
        result = run_cell(CellSpec("random", 0, {"memory": "random", "seed": 0}, folder))
    assert result.status == "failed" and "in use by another ccl process" in result.error
    assert (held / "config.json").exists()


@pytest.mark.parametrize("how", ["held by the mask", "handler ran inside"])
def test_a_signal_during_a_deferred_write_is_honoured_right_after_it(how):
    import threading
    written = []
    with signals_raise_interrupted():
        with pytest.raises(Interrupted) as caught:
            with signals_deferred():
                if how == "held by the mask":  # to this thread, which blocks it: pending until the block ends
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
                else:  # a process-wide signal another thread took: Python runs the handler here, inside
                    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
                written.append("whole")
            written.append("after the block")  # never reached: the interrupt comes first
    assert written == ["whole"] and caught.value.signum == signal.SIGTERM
    from ccl.guards import _Deferral
    assert _Deferral.pending is None and _Deferral.depth == 0  # nothing left to raise in a later block


def test_a_diverging_run_ends_as_diverged_and_absurd_rates_are_refused(tmp_path, tiny_run, interrupted_run):
    import torch
    with pytest.raises(CclError, match="lr: expected a finite number, got inf"):
        make_config(**tiny_run, lr=float("inf"))
    with pytest.raises(CclError, match="lr must be in"):
        make_config(**tiny_run, lr=1e10)
    run_dir = _stopped_run(tmp_path, tiny_run, interrupted_run)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    blown = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save({**ckpt, "model": blown}, run_dir / "checkpoint.pt")  # a learner whose weights blew up
    with pytest.raises(CclError, match="the training loss became nan in experience 2"):
        resume_run(run_dir, progress=False)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "diverged"
    assert not (run_dir / "results.json").exists()


def test_a_loss_that_explodes_without_becoming_nan_ends_the_run_diverged(tmp_path):
    """At lr 10 split-digits' loss climbs past 1e12 and stays finite: without the explosion
    rule the run ended `finished` at chance."""
    result = CliRunner().invoke(main, ["run", "--scenario", "split-digits", "--lr", "10", "--epochs", "2",
                                       "--seed", "1", "--quiet", "--runs-dir", str(tmp_path)])
    (run_dir,) = tmp_path.iterdir()
    state = json.loads((run_dir / "status.json").read_text())
    assert state["status"] == "diverged" and "\n" not in state["error"]
    assert re.fullmatch(r"the training loss exploded to \S+ \(above 1e\+04\) in experience 0 by step \d+: "
                        r"try a smaller --lr", state["error"]), state["error"]
    assert result.exit_code == 2 and result.output.endswith(f"error: {state['error']}\n")
    assert not (run_dir / "results.json").exists()


def test_a_failed_resume_keeps_the_logs_for_the_next(tmp_path, tiny_run, interrupted_run):
    import torch
    run_dir = _stopped_run(tmp_path, tiny_run, interrupted_run)
    rows = (run_dir / "logs" / "eval_results.csv").read_text().count("\n")
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    torch.save({**ckpt, "metric_states": []}, run_dir / "checkpoint.pt")  # loads, then fails to restore
    with pytest.raises(CclError):
        resume_run(run_dir, progress=False)
    torch.save(ckpt, run_dir / "checkpoint.pt")
    resume_run(run_dir, progress=False)
    full = (run_dir / "logs" / "eval_results.csv").read_text()
    assert full.count("\n") > rows and not list((run_dir / "logs").glob(".*.prev"))


@pytest.mark.parametrize("content, message", [
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"run": {"memory": "random"}}', "run.seed is missing"),
])
def test_a_deep_or_mistyped_json_is_one_line_in_resume_and_report(tmp_path, tiny_run, interrupted_run, content,
                                                                  message):
    run_dir = _stopped_run(tmp_path, tiny_run, interrupted_run)
    (run_dir / "config.json").write_text(content)
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    report = CliRunner().invoke(main, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    assert "Traceback" not in report.output


@pytest.mark.parametrize("args, message", [
    (["--seed", "4294967296"], "seed must be below 2**32"),
    (["--mem-batch", "100000000"], "more than the memory holds"),
    (["--mem-size", "1000000000", "--strategy", "er-ace"], "more than all the training images"),
    (["--config", "/dev/zero"], "not a regular file"),
])
def test_absurd_values_are_one_line_before_any_folder(tmp_path, args, message):
    result = CliRunner().invoke(main, ["run", "--scenario", "split-digits", "--runs-dir", str(tmp_path / "runs"),
                                       *args])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_memory_settings_that_are_not_a_table_are_one_line(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('memory_settings = "x"\n')
    result = CliRunner().invoke(main, ["run", "--config", str(config), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "should be a table" in result.output


def test_class_names_are_drawn_as_text(tmp_path):
    import torch
    from ccl.report import save_image_grid
    save_image_grid(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]), (0, 0, 0), (1, 1, 1),
                    ["$\\foo$", "caf\udce9"], tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_a_sigterm_right_after_the_folder_is_made_leaves_it_interrupted_and_resumable(tmp_path):
    """The signal lands between `new_run_dir` and the run's start: the handlers are already
    in, so the folder gets its configuration and the status `interrupted` (before, SIGTERM
    took its default action there and left a folder with no status), and its resume ends
    with the matrix of an uninterrupted run."""
    import subprocess
    import sys
    args = ["run", "--scenario", "split-digits", "--epochs", "1", "--train-per-class", "20", "--mem-size", "20",
            "--width", "16", "--seed", "0", "--quiet", "--device", "cpu"]
    signal_after_mkdir = (
        "import os, signal, sys\n"
        "import ccl.experiment as experiment\n"
        "made = experiment.new_run_dir\n"
        "def new_run_dir(*a, **k):\n"
        "    folder = made(*a, **k)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return folder\n"
        "experiment.new_run_dir = new_run_dir\n"
        "from ccl.cli import main\n"
        "main(sys.argv[1:])\n")
    stopped = subprocess.run([sys.executable, "-c", signal_after_mkdir, *args, "--runs-dir", str(tmp_path / "a")],
                             capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    (run_dir,) = (tmp_path / "a").iterdir()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert (run_dir / "config.json").exists() and not (run_dir / "checkpoint.pt").exists()
    assert "nothing to resume" in stopped.stderr and "resume with" not in stopped.stderr
    assert CliRunner().invoke(main, ["run", "--resume", str(run_dir)]).exit_code == 0
    assert CliRunner().invoke(main, [*args, "--runs-dir", str(tmp_path / "b")]).exit_code == 0
    (whole,) = (tmp_path / "b").iterdir()
    matrix = [json.loads((d / "results.json").read_text())["accuracy_matrix"] for d in (run_dir, whole)]
    assert matrix[0] == matrix[1]
