"""A run stopped inside an experience, or inside its memory's condensation, resumes from the
checkpoint it wrote there to the accuracy matrix and logs of an uninterrupted run (issue
38). The stop is a real SIGINT to the process (what Ctrl-C sends) right after such a
checkpoint is written, or a kill -9 of a `ccl run` subprocess; the checkpoints come every
few iterations (`CheckpointClock(iterations=...)`, or `--checkpoint-every` a microsecond).
A `ccl run` subprocess runs on one thread, as the tests do (conftest.py): two threads sum
in another order, and the losses would differ in their fourth decimal."""
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ccl.checkpoint import rng_state, set_rng_state
from ccl.cli import main
from ccl.condense import Condensed, LoopCheckpoint, datadam, pad
from ccl.experiment import make_config, prepare
from ccl.guards import stop_requested
from ccl.resume import CheckpointClock, RecordedOrder
from ccl.runner import run

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(scenario="split-digits", experiences=3, epochs=3, train_per_class=20, mem_size=20, mem_batch=8,
            width=16, batch_size=16)
CASES = {
    "random": dict(memory="random"),
    "er-ace": dict(memory="random", strategy="er-ace"),  # stream slots: their reservoir is in flight
    "reservoir-der++": dict(memory="reservoir", strategy="der++"),  # the stream's reservoir, its logits
    "bic": dict(memory="random", strategy="bic"),  # a teacher copied at the start, a bias layer carried over
    # a fresh learner on the memory, with GDumb's own epochs (more than the run's 3) and lr schedule
    "gdumb": dict(memory="random", strategy="gdumb", strategy_settings={"epochs": 6}),
    "datadam": dict(memory="datadam", memory_settings={"iterations": 6, "width": 16, "real_batch": 8,
                                                       "progress_every": 2}),
    "ctrl-c": dict(memory="random", experiences=2, epochs=5),  # training long enough to stop inside it
}


class StopAfter(CheckpointClock):
    """A checkpoint every `every` iterations; after the `stop`-th one of `phase`, SIGINT."""

    def __init__(self, every: int, stop: int, phase: str = "training"):
        super().__init__(iterations=every)
        self.stop, self.phase, self.count = stop, phase, 0

    def saved(self, position):
        super().saved(position)
        if position["phase"] == self.phase:
            self.count += 1
            if self.count == self.stop:
                os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def counted(monkeypatch):
    """How many minibatches the data loader yields and DataDAM iterations run."""
    count = {"batches": 0, "condensation": 0}
    batches, loss = RecordedOrder.__iter__, datadam._iteration_loss

    def counting_batches(self):
        for batch in batches(self):
            count["batches"] += 1
            yield batch

    def counting_loss(*args, **kwargs):
        count["condensation"] += 1
        return loss(*args, **kwargs)
    monkeypatch.setattr(RecordedOrder, "__iter__", counting_batches)
    monkeypatch.setattr(datadam, "_iteration_loss", counting_loss)
    return count


_uninterrupted: dict = {}


def uninterrupted(case: str, root: Path, counted: dict) -> dict:
    """The case's run without a stop (once per test session): results, logs and counts."""
    if case not in _uninterrupted:
        before = dict(counted)
        run_dir = run(prepare(make_config(**{**TINY, **CASES[case]})), root / f"whole-{case}", progress=False)
        _uninterrupted[case] = {"results": json.loads((run_dir / "results.json").read_text()),
                                "logs": _logs(run_dir), **{k: counted[k] - before[k] for k in counted}}
    return _uninterrupted[case]


def _logs(run_dir: Path) -> dict[str, str]:
    return {name: (run_dir / "logs" / name).read_text() for name in ("training_results.csv", "eval_results.csv")}


def _stopped(case: str, root: Path, clock: CheckpointClock) -> Path:
    with pytest.raises(KeyboardInterrupt):
        run(prepare(make_config(**{**TINY, **CASES[case]})), root, progress=False, checkpoint_clock=clock)
    (run_dir,) = root.iterdir()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    return run_dir


def _same_as_uninterrupted(run_dir: Path, whole: dict) -> None:
    resumed = json.loads((run_dir / "results.json").read_text())
    for key in ("accuracy_matrix", "average_accuracy", "forgetting", "bwt", "final_average_accuracy"):
        assert resumed[key] == whole["results"][key], key
    assert _logs(run_dir) == whole["logs"]  # every epoch logged once, with its uninterrupted numbers


# Experience 0: 15 minibatches (5 an epoch), saves at its 4th, 8th and 12th; experiences 1
# and 2: 12 (4 an epoch), the clock restarted by the previous experience's own checkpoint:
# saves at their 4th, 8th and 12th. The 5th save: experience 1, epoch 1, iteration 3 (its
# 8th minibatch); the 7th: experience 2, epoch 0, iteration 3. GDumb: 12 minibatches an
# experience (20 memory images in GDumb's 16s, 6 epochs), the 5th save at experience 1's
# 8th: epoch 3 (past the run's 3 epochs), iteration 1.
@pytest.mark.parametrize("case, stop, at", [("random", 5, (1, 1, 3)), ("er-ace", 5, (1, 1, 3)),
                                            ("reservoir-der++", 5, (1, 1, 3)), ("bic", 7, (2, 0, 3)),
                                            ("gdumb", 5, (1, 3, 1))])
def test_a_run_stopped_inside_an_experience_resumes_there_to_the_same_results(tmp_path_factory, counted, case,
                                                                               stop, at):
    whole = uninterrupted(case, tmp_path_factory.mktemp("whole"), counted)
    counted.update(batches=0)
    run_dir = _stopped(case, tmp_path_factory.mktemp("cut"), StopAfter(every=4, stop=stop))
    before = counted["batches"]
    position = torch.load(run_dir / "checkpoint.pt", weights_only=True)["position"]
    assert (position["phase"], position["epoch"], position["iteration"]) == ("training", *at[1:])

    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert re.search(rf"resuming {re.escape(str(run_dir))} at experience {at[0]}, epoch {at[1]}, iteration {at[2]} "
                     r"\(saved \d+ s ago\)", result.output), result.output
    _same_as_uninterrupted(run_dir, whole)
    resumed = counted["batches"] - before
    assert before - 1 + resumed == whole["batches"]  # nothing trained on twice (the last fetched was not)


def test_a_run_stopped_inside_a_condensation_resumes_there_to_the_same_results(tmp_path_factory, counted):
    whole = uninterrupted("datadam", tmp_path_factory.mktemp("whole"), counted)
    counted.update(batches=0, condensation=0)
    run_dir = _stopped("datadam", tmp_path_factory.mktemp("cut"), StopAfter(every=2, stop=4, phase="condensing"))
    before = dict(counted)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    done = ckpt["position"]["condensation"]["iteration"]
    assert ckpt["position"]["phase"] == "condensing" and 0 < done < 6

    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert re.search(rf"at experience {ckpt['experience'] + 1}, condensing its memory, iteration {done} ",
                     result.output), result.output
    _same_as_uninterrupted(run_dir, whole)
    resumed = {k: counted[k] - before[k] for k in counted}
    assert before["batches"] + resumed["batches"] == whole["batches"]  # no epoch trained again
    assert before["condensation"] + resumed["condensation"] == whole["condensation"]  # no iteration again


def test_a_gdumb_checkpoint_is_checked_against_gdumbs_epochs(tmp_path_factory):
    run_dir = _stopped("gdumb", tmp_path_factory.mktemp("cut"), StopAfter(every=4, stop=5))
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ckpt["position"]["epoch"] = 6
    torch.save(ckpt, run_dir / "checkpoint.pt")
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 2 and "position's epoch should be in 0..5 " in result.output, result.output


def test_a_second_stop_inside_the_resumed_experience_resumes_too(tmp_path_factory, counted):
    from ccl.runner import resume_run
    whole = uninterrupted("er-ace", tmp_path_factory.mktemp("whole"), counted)
    run_dir = _stopped("er-ace", tmp_path_factory.mktemp("cut"), StopAfter(every=4, stop=2))
    with pytest.raises(KeyboardInterrupt):  # inside the same experience, a later epoch
        resume_run(run_dir, progress=False, checkpoint_clock=StopAfter(every=3, stop=2))
    assert resume_run(run_dir, progress=False)[1]
    _same_as_uninterrupted(run_dir, whole)


def test_a_killed_cli_run_resumes_from_inside_an_experience(tmp_path, counted):
    """`--checkpoint-every` a microsecond: a checkpoint at every minibatch's start; the run
    is killed (-9) once one inside an experience exists, and resumes to the same numbers."""
    whole = uninterrupted("er-ace", tmp_path, counted)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**TINY, **CASES["er-ace"]}.items()]
    proc = subprocess.Popen([sys.executable, "-m", "ccl.cli", "run", *flags, "--quiet", "--checkpoint-every",
                             "0.000001", "--runs-dir", str(tmp_path / "runs")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    deadline, run_dir = time.time() + 120, None
    while run_dir is None and time.time() < deadline and proc.poll() is None:
        for ckpt in (tmp_path / "runs").glob("*/checkpoint.pt"):
            try:
                saved = torch.load(ckpt, weights_only=True)
                if "position" in saved and saved["experience"] >= 0:  # inside experience 1 or later
                    run_dir = ckpt.parent
            except Exception:
                pass  # being replaced right now
        time.sleep(0.01)
    assert run_dir is not None, proc.communicate()[0]
    proc.kill()
    proc.communicate(timeout=60)
    assert not (run_dir / "results.json").exists(), "the run ended before it could be killed"
    assert json.loads((run_dir / "config.json").read_text())["run"]["checkpoint_every"] == 0.000001
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    _same_as_uninterrupted(run_dir, whole)


class SignalAt(CheckpointClock):
    """No periodic checkpoint (as `--checkpoint-every 0`); a SIGINT, what Ctrl-C sends, at
    the `at`-th time it is asked (a minibatch or a condensation iteration)."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.asked = at, 0

    def due(self):
        self.asked += 1
        if self.asked == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().due()


# Experience 0 of TINY: 15 minibatches, then (datadam) its condensation's iterations; the
# 20th question is experience 1's 5th minibatch, the 17th datadam's 2nd iteration.
@pytest.mark.parametrize("case, at, phase", [("random", 20, "training"), ("datadam", 17, "condensing")])
def test_a_signal_saves_where_the_run_stands_without_periodic_checkpoints(tmp_path_factory, counted, case, at,
                                                                          phase):
    whole = uninterrupted(case, tmp_path_factory.mktemp("whole"), counted)
    run_dir = _stopped(case, tmp_path_factory.mktemp("cut"), SignalAt(at))
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["position"]["phase"] == phase
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    where = r"epoch \d, iteration \d+" if phase == "training" else r"condensing its memory, iteration \d"
    assert re.search(rf"resuming {re.escape(str(run_dir))} at experience \d, {where} \(saved ", result.output)
    _same_as_uninterrupted(run_dir, whole)


def test_a_second_signal_while_the_checkpoint_is_written_waits_for_the_write(tmp_path_factory, counted,
                                                                             monkeypatch):
    """Ctrl-C, and Ctrl-C again while the checkpoint the first asked for is being written:
    the second is held until the file is whole, then stops the run; the resume ends as an
    uninterrupted run."""
    import ccl.runner
    whole = uninterrupted("er-ace", tmp_path_factory.mktemp("whole"), counted)
    write, writes = ccl.runner.save_torch, []

    def write_during_a_signal(path, state):
        if "position" in state:  # the checkpoint inside the experience, in its deferred block
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        writes.append(path.name)
        return write(path, state)
    monkeypatch.setattr(ccl.runner, "save_torch", write_during_a_signal)
    run_dir = _stopped("er-ace", tmp_path_factory.mktemp("cut"), SignalAt(20))
    monkeypatch.undo()
    assert writes == ["checkpoint.pt"] * 2  # experience 0's end, then the one the signal asked for
    assert not list(run_dir.glob(".*.tmp"))
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["position"]["phase"] == "training"
    assert CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"]).exit_code == 0
    _same_as_uninterrupted(run_dir, whole)


def test_a_run_stopped_before_its_first_checkpoint_offers_no_resume(tmp_path, monkeypatch):
    """Two signals at the first minibatch: the second stops the run before the checkpoint the
    first asked for, so nothing is saved, and no resume command is offered."""
    due = CheckpointClock.due

    def twice(self):
        os.kill(os.getpid(), signal.SIGINT)
        while not stop_requested():  # the handler of the first has run
            time.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)
        return due(self)
    monkeypatch.setattr(CheckpointClock, "due", twice)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    result = CliRunner().invoke(main, ["run", *flags, "--quiet", "--runs-dir", str(tmp_path)])
    (run_dir,) = tmp_path.iterdir()
    assert result.exit_code == 130 and "resume with" not in result.output, result.output
    assert f"interrupted before its first checkpoint: nothing to resume ({run_dir} holds" in result.output
    assert not (run_dir / "checkpoint.pt").exists()
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"


def test_ctrl_c_on_a_cli_run_saves_where_it_stands_and_the_resume_goes_on_from_there(tmp_path, counted):
    """A SIGINT to a `ccl run` once it trains, long before its first periodic checkpoint: it
    saves at the next minibatch, exits 130 with the resume command, and the resume starts
    inside the experience and ends as an uninterrupted run."""
    whole = uninterrupted("ctrl-c", tmp_path, counted)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**TINY, **CASES["ctrl-c"]}.items()]
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "ccl.cli", "run", *flags, "--quiet", "--checkpoint-every",
                             "1000000", "--runs-dir", str(runs)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    deadline, logs = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None:  # until its first epoch is logged
        logs = list(runs.glob("*/logs/training_results.csv"))
        if logs and "\n0,0," in logs[0].read_text():
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert logs and proc.returncode == 130, out
    run_dir = logs[0].parent.parent
    assert f"interrupted; resume with: ccl run --resume {run_dir}" in out, out
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert re.search(rf"resuming {re.escape(str(run_dir))} at experience \d, epoch \d, iteration \d ",
                     result.output), result.output
    _same_as_uninterrupted(run_dir, whole)


# A checkpoint inside an experience is checked whole, as one at its end (tests/test_trust.py).
def _tamper(ckpt: dict, how: str) -> None:
    position = ckpt["position"]
    if how == "epoch":
        position["epoch"] = 99
    elif how == "fetch":
        position["fetch_rng"] = {0: {"torch": torch.zeros(3, dtype=torch.uint8)}}
    elif how == "start weights":
        del ckpt["experience_start_model"]
    elif how == "reservoir":
        ckpt["memory"]["stream_reservoir"]["seen"] = torch.zeros(7, dtype=torch.long)
    elif how == "last experience":
        ckpt["experience"] = 2


@pytest.mark.parametrize("how, problem", [
    ("epoch", "position's epoch should be in 0..2 and its iteration a count"),
    ("fetch", "position.fetch_rng: rng is not a generator state"),
    ("start weights", "model holds other weights than this run's learner"),
    ("reservoir", "memory.stream_reservoir should count the samples offered to each class"),
    ("last experience", "experience should be an index in -1..1 for a checkpoint inside one, not 2"),
])
def test_a_tampered_checkpoint_inside_an_experience_is_one_line(tmp_path_factory, how, problem):
    run_dir = _stopped("er-ace", tmp_path_factory.mktemp("cut"), StopAfter(every=4, stop=5))
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    _tamper(ckpt, how)
    torch.save(ckpt, run_dir / "checkpoint.pt")
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"{run_dir / 'checkpoint.pt'}: not what ccl wrote there ({problem}" in lines[0], lines[0]
    shutil.rmtree(run_dir)


# The methods' side of it, without a run: a loop resumed from the progress it saved at
# iteration 3 ends where the uninterrupted loop ends, bit for bit.
class SaveAt(LoopCheckpoint):
    """Keeps (a copy of) the progress saved at iteration `at`, with the generators' state;
    resumes from `pending` when given one."""

    def __init__(self, at: int, pending: dict | None = None):
        self.at, self.kept, self.pending = at, None, pending

    def resume(self):
        if self.pending is not None:
            set_rng_state(self.pending["rng"])
        return self.pending

    def due(self):
        return True

    def save(self, progress):
        if progress["iteration"] == self.at:
            self.kept = copy.deepcopy({**progress, "rng": rng_state()})  # its tensors are the loop's own


def _datadam(checkpoint):
    real = torch.randn(24, 3, 8, 8)
    labels = torch.arange(24) % 2
    settings = datadam.DataDAMSettings(iterations=6, real_batch=4, width=8, depth=2, progress_every=2)
    return datadam.condense(real, labels, {0: 2, 1: 2}, "cpu", settings, progress=False, checkpoint=checkpoint)


def _pad(checkpoint):
    from ccl.condense.pad import PADSettings, condense
    real = torch.randn(24, 3, 8, 8)
    labels = torch.tensor([3] * 12 + [7] * 12)
    settings = PADSettings(iterations=6, syn_steps=2, expert_epochs=1, max_start_epoch=1, expert_train_epochs=3,
                           num_experts=2, expert_batch=16, lr_img=1.0, lr_lr=1e-7, width=8, depth=2,
                           score_networks=1, score_epochs=1, progress_every=2, soft_labels=True, lr_labels=0.5)
    return condense(real, labels, {3: 2, 7: 2}, "cpu", settings, progress=False, checkpoint=checkpoint)


@pytest.mark.parametrize("method, module, loss", [(_datadam, datadam, "_iteration_loss"), (_pad, pad, "match_once")])
def test_a_condensation_resumed_from_its_saved_progress_ends_as_an_uninterrupted_one(monkeypatch, method, module,
                                                                                      loss):
    iterations = []
    one = getattr(module, loss)
    monkeypatch.setattr(module, loss, lambda *a, **k: iterations.append(1) or one(*a, **k))
    torch.manual_seed(0)
    whole = method(None)
    torch.manual_seed(0)
    saving = SaveAt(3)
    saved = method(saving)
    assert saving.kept is not None and saving.kept["iteration"] == 3
    torch.manual_seed(0)
    iterations.clear()
    resumed = method(SaveAt(99, pending=saving.kept))
    assert len(iterations) == 3  # the three after the save
    for a, b, c in zip(whole, saved, resumed):
        assert torch.equal(a, b) and torch.equal(a, c)  # saving changes nothing; resuming neither
    if isinstance(whole, Condensed):
        assert torch.equal(whole.soft_labels, resumed.soft_labels)


def test_progress_of_another_condensation_is_refused():
    torch.manual_seed(0)
    saving = SaveAt(3)
    _datadam(saving)
    with pytest.raises(ValueError, match="DataDAM progress does not fit this condensation: its images"):
        torch.manual_seed(0)
        _datadam(SaveAt(99, pending={**saving.kept, "images": torch.zeros(3, 3, 8, 8)}))
