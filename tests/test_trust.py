"""Nothing read from disk is believed before it is checked (issue 39): every file ccl opens
is a regular file, opened without blocking, bounded in size and of the shape ccl wrote,
else one line naming it, with the run folder left as it was. Writers never write through
a hard link or a linked cache folder, a full disk frees its space before recording the
failure, and a signal during a finished run's final write is not an interruption."""
import json
import os
import shutil
import signal
import threading

import pytest
import torch
from click.testing import CliRunner

from ccl.cli import main
from ccl.experiment import make_config, prepare
from ccl.runner import run


@pytest.fixture
def no_hang():
    """A read that blocks (a FIFO waiting for a writer) fails the test instead of hanging it."""
    def timeout(signum, frame):
        raise TimeoutError("blocked reading a file")
    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def stopped_run(tmp_path, tiny_run, interrupted_run):
    """A run of 5 experiences stopped after experience 1 (its checkpoint written)."""
    return interrupted_run(prepare(make_config(**tiny_run)), tmp_path / "runs", after=1)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tiny = dict(scenario="split-digits", epochs=1, train_per_class=20, mem_size=20, mem_batch=8, width=16,
                batch_size=16, experiences=2)
    return run(prepare(make_config(**tiny)), tmp_path_factory.mktemp("runs"), progress=False)


def _files(folder):
    """Every file of a run folder and its bytes, but the lock (a resume writes its pid there)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".ccl.lock"}


def _one_line_error(result, *words):
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in result.output, result.output


# 1. a lock file that is a hard link to a file outside the folder
def test_a_hard_linked_lock_is_refused_and_the_file_it_links_to_is_untouched(tmp_path, stopped_run):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    (stopped_run / ".ccl.lock").unlink()
    os.link(outside, stopped_run / ".ccl.lock")
    _one_line_error(CliRunner().invoke(main, ["run", "--resume", str(stopped_run)]), "hard link")
    out = tmp_path / "cmp"
    out.mkdir()
    os.link(outside, out / ".ccl.lock")
    result = CliRunner().invoke(main, ["compare", "--scenario", "split-digits", "--memory", "random", "--seeds", "1",
                                       "--out", str(out), "--quiet"])
    _one_line_error(result, "hard link")
    assert outside.read_text() == "precious\n"


def test_a_hard_linked_log_is_refused_and_the_file_it_links_to_is_untouched(tmp_path, stopped_run):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    logs = stopped_run / "logs"
    (logs / "eval_results.csv").rename(logs / ".eval_results.csv.prev")  # kept by a resume that was cut short
    os.link(outside, logs / "eval_results.csv")  # which Avalanche's logger would open with "w"
    _one_line_error(CliRunner().invoke(main, ["run", "--resume", str(stopped_run)]), "hard link")
    assert outside.read_text() == "precious\n"


def test_a_hard_linked_lock_in_a_cell_fails_that_cell_only(tmp_path):
    from ccl.compare import CellSpec, run_cell
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    held = tmp_path / "cells" / "random-s0" / "20260101-000000-split-digits-random-s0"
    held.mkdir(parents=True)
    os.link(outside, held / ".ccl.lock")
    result = run_cell(CellSpec("random", 0, {"memory": "random", "seed": 0}, held.parent))
    assert result.status == "failed" and "hard link" in result.error
    assert held.is_dir() and outside.read_text() == "precious\n"


# 2. a checkpoint with tampered values (no code in it)
def _tamper(ckpt, how):
    if how == "model missing":
        del ckpt["model"]
    elif how == "weights of another shape":
        name = next(iter(ckpt["model"]))
        ckpt["model"][name] = torch.zeros(3, 3)
    elif how == "empty accuracy matrix":
        ckpt["results"]["accuracy_matrix"] = []
    elif how == "memory images of another shape":
        ckpt["memory"]["images"] = ckpt["memory"]["images"][:, :, :4]
    elif how == "memory labels beyond the classes":
        ckpt["memory"]["labels"][0] = 99
    elif how == "bad rng":
        ckpt["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)
    else:
        ckpt["experience"] = how


@pytest.mark.parametrize("how, problem", [
    (-4, "experience should be an index in 0..4, not -4"),
    (99, "experience should be an index in 0..4, not 99"),
    ("1", "experience should be an index in 0..4, not 1"),
    ("empty accuracy matrix", "accuracy_matrix has 0 entries for 2 experiences done"),
    ("model missing", "model is missing"),
    ("weights of another shape", "should be a tensor of shape"),
    ("memory images of another shape", "memory images should be a (20, 1, 8, 8) tensor"),
    ("memory labels beyond the classes", "memory labels should be at most 20 class indices below 10"),
    ("bad rng", "rng is not a generator state"),
])
def test_a_tampered_checkpoint_is_one_line_and_the_folder_is_left_as_it_was(stopped_run, how, problem):
    ckpt = torch.load(stopped_run / "checkpoint.pt", weights_only=True)
    _tamper(ckpt, how)
    torch.save(ckpt, stopped_run / "checkpoint.pt")
    before = _files(stopped_run)
    result = CliRunner().invoke(main, ["run", "--resume", str(stopped_run), "--quiet"])
    _one_line_error(result, f"{stopped_run / 'checkpoint.pt'}: not what ccl wrote there", problem)
    assert _files(stopped_run) == before


# 3. results.json checked whole: resume and report
@pytest.mark.parametrize("change, problem", [
    (lambda r: r.pop("seen_accuracy"), "seen_accuracy is missing"),
    (lambda r: r.pop("memory_size"), "memory_size is missing"),
    (lambda r: r["forgetting"].pop(), "forgetting has 1 entries for 2 experiences done"),
    (lambda r: r["accuracy_matrix"][0].pop(), "accuracy_matrix[0] has 1 accuracies for 2 experiences"),
    (lambda r: r.update(final_average_accuracy=1e308), "final_average_accuracy should be a finite number in [0, 1], "
                                                       "not 1e+308"),
    (lambda r: r["seen_accuracy"].__setitem__(0, -0.5), "seen_accuracy[0] should be a finite number in [0, 1]"),
    (lambda r: r["forgetting"].__setitem__(1, 3.0), "forgetting[1] should be a finite number in [-1, 1]"),
    (lambda r: r.update(total_seconds=float("nan")), "total_seconds should be a finite number >= 0, not nan"),
    (lambda r: r["memory_size"].update(bytes=-1), "memory_size.bytes should be a finite number >= 0"),
])
def test_a_results_file_missing_a_series_or_out_of_range_is_one_line_and_report_fails_that_run(
        tmp_path, finished, change, problem):
    good, bad = tmp_path / "runs" / "good", tmp_path / "runs" / "bad"
    shutil.copytree(finished, good)
    shutil.copytree(finished, bad)
    config = json.loads((bad / "config.json").read_text())
    config["run"]["seed"] = 1  # another seed of the same group: the report keeps one run per seed
    (bad / "config.json").write_text(json.dumps(config))
    results = json.loads((bad / "results.json").read_text())
    change(results)
    (bad / "results.json").write_text(json.dumps(results))
    _one_line_error(CliRunner().invoke(main, ["run", "--resume", str(bad)]), problem)
    report = CliRunner().invoke(main, ["report", str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    (group,) = json.loads((tmp_path / "report" / "comparison.json").read_text())["memories"]
    assert sorted(r["status"] for r in group["runs"]) == ["failed", "finished"]
    assert problem in next(r["error"] for r in group["runs"] if r["status"] == "failed")


# 4. FIFOs are refused at once
def test_a_fifo_config_is_refused_without_waiting(tmp_path, no_hang):
    os.mkfifo(tmp_path / "run.toml")
    result = CliRunner().invoke(main, ["run", "--config", str(tmp_path / "run.toml"),
                                       "--runs-dir", str(tmp_path / "runs")])
    _one_line_error(result, "is a FIFO, not a regular file")


@pytest.mark.parametrize("name", ["checkpoint.pt", "config.json"])
@pytest.mark.parametrize("kind, problem", [("FIFO", "is a FIFO, not a regular file"),
                                           ("link", "is a symbolic link")])
def test_a_fifo_or_link_in_a_run_folder_is_refused_without_waiting(stopped_run, no_hang, name, kind, problem):
    if kind == "FIFO":
        (stopped_run / name).unlink()
        os.mkfifo(stopped_run / name)
    else:  # the same file, reached through a link: not what ccl wrote there
        (stopped_run / name).rename(stopped_run.parent / name)
        (stopped_run / name).symlink_to(stopped_run.parent / name)
    before = _files(stopped_run)
    result = CliRunner().invoke(main, ["run", "--resume", str(stopped_run), "--quiet"])
    _one_line_error(result, f"{stopped_run / name}: {problem}")
    assert _files(stopped_run) == before


# 5. a signal during a finished run's final write
def test_a_signal_during_the_final_write_leaves_a_finished_run_reported_as_finished(tmp_path, tiny_run,
                                                                                   monkeypatch):
    import ccl.runner
    real_write = ccl.runner.write_json

    def write_then_signal(path, data):
        if path.name == "results.json":  # inside the deferred block: honoured after it
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
        return real_write(path, data)

    monkeypatch.setattr(ccl.runner, "write_json", write_then_signal)
    result = CliRunner().invoke(main, ["run", "--scenario", "split-digits", "--experiences", "2", "--epochs", "1",
                                       "--train-per-class", "20", "--mem-size", "20", "--width", "8", "--quiet",
                                       "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0 and "interrupted" not in result.output, result.output
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    assert (run_dir / "memory.png").exists()


def test_resuming_a_finished_run_draws_a_missing_memory_picture(tmp_path, finished):
    run_dir = tmp_path / finished.name
    shutil.copytree(finished, run_dir)
    (run_dir / "memory.png").unlink(missing_ok=True)
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir)])
    assert result.exit_code == 0 and "already finished" in result.output
    assert (run_dir / "memory.png").exists()


# 6. a full disk: the failed write's space is freed before the failure is recorded
def test_a_failed_write_frees_its_space_even_if_the_writer_still_holds_it(tmp_path):
    import errno
    from ccl.io import atomic_write
    held = []

    def fill_then_fail(tmp):
        f = open(tmp, "wb")
        f.write(b"x" * 2**20)
        f.flush()
        held.append(f)  # as torch's writer stays referenced from the traceback
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with pytest.raises(OSError):
        atomic_write(tmp_path / "checkpoint.pt", fill_then_fail)
    assert os.fstat(held[0].fileno()).st_size == 0  # blocks given back, though the file is still open
    held[0].close()
    assert list(tmp_path.iterdir()) == []


FULL_DISK = """
mkdir -p {mount} && mount -t tmpfs -o size=20m none {mount} || exit 77
{python} -c 'import shutil; open("{mount}/filler", "wb").write(b"x" * (shutil.disk_usage("{mount}").free - 700 * 1024))'
{python} -m ccl.cli run --scenario split-digits --experiences 2 --epochs 1 --train-per-class 10 --mem-size 20 \
    --quiet --runs-dir {mount}/runs
cat {mount}/runs/*/status.json
"""


def test_a_real_full_disk_ends_the_run_failed(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    script = FULL_DISK.format(mount=tmp_path / "disk", python=sys.executable)
    try:  # a 20 MB tmpfs of its own, in a user and mount namespace (where the kernel allows one)
        done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if done.returncode == 77 or "unshare:" in done.stderr:
        pytest.skip("no tmpfs of its own here (unshare -rm refused)")
    assert "checkpoint.pt: No space left on device" in done.stderr, done.stderr
    assert json.loads(done.stdout[done.stdout.index("{"):])["status"] == "failed", done.stdout


# 7. a linked cache folder inside a data set
def test_a_linked_cache_folder_in_a_data_set_is_not_written_through(tmp_path, monkeypatch):
    from test_data import write_class_folders

    from ccl.data.folder import load_folder
    data, outside = tmp_path / "data", tmp_path / "outside"
    write_class_folders(data, ["a", "b"], 3, size=(8, 8))
    outside.mkdir()
    (data / ".ccl-cache").symlink_to(outside)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = load_folder(data)
    assert list(outside.iterdir()) == []
    assert len(list((tmp_path / "cache" / "ccl" / "arrays").glob("*.npz"))) == 1
    assert (load_folder(data).train_x == first.train_x).all()  # read back from ccl's own cache


# 8. a crafted copy of the CSV log kept across a resume
def test_a_crafted_kept_log_is_one_line(stopped_run):
    logs = stopped_run / "logs"
    (logs / ".eval_results.csv.prev").write_text("metric,training_exp\nx,not-a-number\n")
    (logs / "eval_results.csv").write_text("")
    before = _files(stopped_run)
    result = CliRunner().invoke(main, ["run", "--resume", str(stopped_run), "--quiet"])
    _one_line_error(result, f"{logs / '.eval_results.csv.prev'}: not what ccl wrote there (line 2")
    assert _files(stopped_run) == before


# 9. a refused or held comparison folder
def test_a_foreign_out_folder_is_refused_without_a_lock_left_in_it(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine\n")
    result = CliRunner().invoke(main, ["compare", "--scenario", "split-digits", "--memory", "random", "--seeds", "1",
                                       "--out", str(foreign), "--quiet"])
    _one_line_error(result, "is not a comparison folder")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_report_leaves_a_comparison_another_process_holds(tmp_path):
    from pathlib import Path

    from ccl.io import folder_lock
    out = tmp_path / "comparison"
    shutil.copytree(Path(__file__).parent / "fixtures" / "comparison", out)
    (out / "comparison.md").unlink(missing_ok=True)
    with folder_lock(out, "a test"):
        result = CliRunner().invoke(main, ["report", str(out)])
    _one_line_error(result, "in use by another ccl process")
    assert not (out / "comparison.md").exists()
    assert CliRunner().invoke(main, ["report", str(out)]).exit_code == 0  # free again: it writes


# 10. sizes the machine cannot hold are refused before the allocation
@pytest.mark.parametrize("args", [
    ["run", "--scenario", "split-digits", "--width", "10000000"],
    ["condense", "--dataset", "digits", "--method", "datadam", "--ipc", "1000000000"],
    ["condense", "--dataset", "digits", "--method", "random", "--ipc", "1000000000"],
])
def test_sizes_beyond_the_machine_are_one_line_before_any_work(tmp_path, args):
    extra = ["--runs-dir", str(tmp_path / "runs")] if args[0] == "run" else ["--out", str(tmp_path / "set.pt")]
    _one_line_error(CliRunner().invoke(main, [*args, *extra]), "GiB, more than the")
    assert list(tmp_path.iterdir()) == []


def test_condense_refuses_more_images_per_class_than_the_data_has(tmp_path):
    result = CliRunner().invoke(main, ["condense", "--dataset", "digits", "--method", "random", "--ipc", "500",
                                       "--out", str(tmp_path / "set.pt")])
    _one_line_error(result, "--ipc 500 is more than the", "training images of class")
    assert list(tmp_path.iterdir()) == []


# 11. Ctrl-C before a run folder exists
def test_an_interrupt_before_the_run_starts_names_no_folder(tmp_path, monkeypatch):
    import ccl.cli
    import ccl.experiment

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    args = ["run", "--scenario", "split-digits", "--runs-dir", str(tmp_path / "runs")]
    monkeypatch.setattr(ccl.experiment, "load_dataset", interrupted)  # during the data load
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130 and "nothing to resume" in result.output and "None" not in result.output
    monkeypatch.setattr(ccl.cli, "config_values", interrupted)  # before anything is loaded
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130 and "interrupted" in result.output and "Aborted" not in result.output
