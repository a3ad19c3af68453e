"""Every field read is checked, and every argument before training starts (issue 46,
item 7): a checkpoint inside a condensation, a memory's soft targets and classes, a
results file's figures and a synthetic set's soft labels are refused in one line, the run
folder left as it was (status.json included); a setting that is NaN, a model size that
cannot be built or ignored, and sizes of the Python API's memory that are no count or
beyond the machine are refused before any training; a resume removes the temporary file
a killed memory picture left."""
import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from ccl import CondensedReplay
from ccl.cli import main
from ccl.condense import Condensed
from ccl.condense.datadam import DataDAMSettings
from ccl.experiment import make_config, prepare
from ccl.memory import DeviceMemoryPlugin
from ccl.memory.fillers import Filler
from ccl.runner import run
from test_checkpoints_within import StopAfter, _stopped
from test_python_api import benchmark, mlp, naive

TINY = dict(scenario="split-digits", epochs=1, train_per_class=20, mem_size=20, mem_batch=8, width=16, batch_size=16)


def _files(folder):
    """Every file of a run folder and its bytes, but the lock (a resume writes its pid there)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".ccl.lock"}


def _refused_as_it_was(folder, problem: str) -> None:
    """`ccl run --resume folder` is one line naming the checkpoint and `problem`, and
    leaves every file as it was."""
    before = _files(folder)
    result = CliRunner().invoke(main, ["run", "--resume", str(folder), "--quiet"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"{folder / 'checkpoint.pt'}: not what ccl wrote there ({problem}" in lines[0], lines[0]
    assert _files(folder) == before  # status.json too: refused before the resume began


def _tampered(source, target, change):
    shutil.copytree(source, target)
    ckpt = torch.load(target / "checkpoint.pt", weights_only=True)
    change(ckpt)
    torch.save(ckpt, target / "checkpoint.pt")
    return target


# 1. a checkpoint saved inside a DataDAM condensation
@pytest.fixture(scope="module")
def condensing(tmp_path_factory):
    """A DataDAM run stopped inside its condensation (6 iterations), once for the module."""
    return _stopped("datadam", tmp_path_factory.mktemp("condensing"), StopAfter(every=2, stop=2, phase="condensing"))


def _progress(ckpt) -> dict:
    return ckpt["position"]["condensation"]


@pytest.mark.parametrize("change, problem", [
    (lambda p: p.update(iteration=9999), "position.condensation: its iteration should be in 0..6, not 9999"),
    (lambda p: p.update(iteration=-1), "position.condensation: its iteration should be in 0..6, not -1"),
    (lambda p: p.update(images=p["images"][:-1]), "position.condensation: its optimizer.state[0] should hold a "
                                                  "momentum of shape ("),
    (lambda p: p.update(images=p["images"][..., :4]), "position.condensation.images should be at most 20 images "
                                                      "of shape (1, 8, 8)"),
    (lambda p: p.pop("optimizer"), "position.condensation: its optimizer is missing"),
    (lambda p: p.update(info="done"), "position.condensation: its info should be a dictionary, not str"),
    (lambda p: p["info"].update(loss_curve=[float("nan")]), "position.condensation: its info.loss_curve[0] should be a finite number, not nan"),
    (lambda p: p.update(loop="pad"), "position.condensation: it was saved by 'pad', not 'datadam'"),
])
def test_a_tampered_condensation_checkpoint_is_one_line_before_the_resume_begins(condensing, tmp_path, change,
                                                                                  problem):
    folder = _tampered(condensing, tmp_path / "run", lambda ckpt: change(_progress(ckpt)))
    _refused_as_it_was(folder, problem)


# 2. a memory's soft targets and classes in a checkpoint
@pytest.fixture(scope="module")
def soft_run(tmp_path_factory):
    """A herding-soft run (its rows carry the learner's logits as soft targets) stopped
    after its second experience of five."""
    class Stop(Exception):
        pass

    def stop(i, results):
        if i == 1:
            raise Stop
    runs = tmp_path_factory.mktemp("soft")
    with pytest.raises(Stop):
        run(prepare(make_config(**TINY, memory="herding-soft")), runs, progress=False, on_experience=stop)
    (folder,) = runs.iterdir()
    return folder


def _soft(change):
    def tamper(ckpt):
        ckpt["memory"]["soft_targets"] = change(ckpt["memory"]["soft_targets"])
    return tamper


def _classes(change):
    def tamper(ckpt):
        ckpt["memory"]["classes"] = change(ckpt["memory"]["classes"])
    return tamper


@pytest.mark.parametrize("tamper, problem", [
    (_soft(lambda s: s.fill_(float("inf"))), "memory.soft_targets should be finite logits of at most 10000"),
    (_soft(lambda s: s.fill_(1e30)), "memory.soft_targets should be finite logits of at most 10000"),
    (_soft(lambda s: s.fill_(float("nan"))), "memory.soft_targets are all NaN"),
    (_soft(lambda s: s[:, :3]), "memory.soft_targets should be a (20, 10) tensor, not (20, 3)"),
    (_soft(lambda s: s[:-2]), "memory.soft_targets should be a (20, 10) tensor, not (18, 10)"),
    (_soft(lambda s: s.long()), "memory.soft_targets should be a floating-point tensor, not torch.int64"),
    (_soft(lambda s: torch.where(torch.arange(10) < 5, s, float("nan"))), "memory.soft_targets: a row should be all"),
    (_classes(lambda c: c + [c[0]]), "memory classes names a class twice"),
    (_classes(lambda c: c[:-1]), "memory classes lacks class"),
    (_classes(lambda c: c + [next(k for k in range(10) if k not in c)]), "memory classes names class "),
])
def test_tampered_soft_targets_or_classes_are_one_line_before_the_resume_begins(soft_run, tmp_path, tamper, problem):
    ckpt = torch.load(soft_run / "checkpoint.pt", weights_only=True)
    assert ckpt["memory"]["soft_targets"].shape == (20, 10) and len(ckpt["memory"]["classes"]) == 4
    _refused_as_it_was(_tampered(soft_run, tmp_path / "run", tamper), problem)


def test_the_untampered_soft_run_resumes(soft_run, tmp_path):
    folder = shutil.copytree(soft_run, tmp_path / "run")
    result = CliRunner().invoke(main, ["run", "--resume", str(folder), "--quiet"])
    assert result.exit_code == 0, result.output


class _NoTargets(Filler):
    """Each new class's first real images, none with a soft target (every class refused)."""

    def fill(self, real, labels, budget, learner, context=None, later=None, trajectory=None):
        keep = torch.cat([torch.nonzero(labels == c).flatten()[:k] for c, k in budget.items()])
        return Condensed(real[keep], labels[keep], torch.full((len(keep), 4), float("nan")), torch.arange(4))


def test_a_memory_keeps_no_soft_targets_while_no_row_has_one():
    """What the checkpoint's check relies on: all-NaN soft targets are never saved."""
    real, labels = torch.randn(16, 1, 2, 2), torch.arange(4).repeat_interleave(4)
    memory = DeviceMemoryPlugin(6, 2, _NoTargets(torch.device("cpu")),
                                lambda cs: (real[torch.isin(labels, torch.tensor(cs))],
                                            labels[torch.isin(labels, torch.tensor(cs))]), torch.device("cpu"))
    memory.update([0, 1], torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4)))
    assert len(memory.labels) == 6 and "soft_targets" not in memory.checkpoint()


# 3. a synthetic set's soft labels
def test_evaluate_blames_soft_labels_that_do_not_fit_not_the_images(tmp_path):
    path = tmp_path / "set.pt"
    torch.save({"images": torch.zeros(4, 1, 8, 8), "labels": torch.tensor([0, 0, 1, 1]), "dataset": "digits",
                "soft_labels": torch.randn(4, 3)}, path)
    result = CliRunner().invoke(main, ["evaluate", str(path), "--epochs", "1", "--networks", "1", "--quiet"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "soft_labels have 3 columns (one per class), which do not fit digits (10 classes)" in result.output
    torch.save({"images": torch.zeros(4, 1, 8, 8), "labels": torch.tensor([0, 0, 1, 1]), "dataset": "digits",
                "soft_labels": torch.full((4, 10), 1e30)}, path)
    result = CliRunner().invoke(main, ["evaluate", str(path), "--epochs", "1", "--networks", "1", "--quiet"])
    assert result.exit_code == 2 and "soft_labels should be finite logits of at most 10000" in result.output


# 4. a finished run (a results file's figures out of range: tests/test_trust.py, beside missing ones)
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return run(prepare(make_config(**TINY, experiences=2)), tmp_path_factory.mktemp("runs"), progress=False)


# 5. arguments, before training starts
@pytest.mark.parametrize("args, message", [
    (["--depth", "1000000"], "--depth must be at most 16 (blocks of the convnet), got 1000000"),
    (["--model", "resnet18", "--width", "1000000"], "--width sizes the convnet; --model resnet18 has its own"),
    (["--model", "resnet18", "--depth", "4", "--width", "8"], "--width and --depth size the convnet"),
    (["--strategy", "der++", "--strategy-set", "alpha=nan"], "der++.alpha: expected a finite number, got nan"),
    (["--memory", "datadam", "--set", "lr_images=nan"], "lr_images: expected a finite number, got nan"),
    (["--memory", "datadam", "--set", "lr_images=-inf"], "lr_images: expected a finite number, got -inf"),
    (["--lr", "nan"], "run.lr: expected a finite number, got nan"),
])
def test_settings_that_are_not_numbers_or_cannot_be_built_are_one_line_before_any_run(tmp_path, args, message):
    result = CliRunner().invoke(main, ["run", "--scenario", "split-digits", "--runs-dir", str(tmp_path / "runs"),
                                       "--quiet", *args])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and message in result.output, result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_resnet18_takes_the_scenarios_own_depth_without_complaint():
    """split-digits' defaults set depth = 2, for its convnet: not the user's --depth."""
    assert make_config(scenario="split-digits", model="resnet18").model == "resnet18"


@pytest.mark.parametrize("kwargs, message", [
    ({"mem_size": 20.5}, "mem_size must be an integer, got 20.5"),
    ({"mem_size": float("nan")}, "mem_size must be an integer, got nan"),
    ({"mem_batch": 8.0}, "mem_batch must be an integer, got 8.0"),
    ({"mem_size": True}, "mem_size must be an integer, got True"),
    ({"settings": DataDAMSettings(lr_images=float("nan"))}, "settings of 'datadam'.lr_images must be a finite number"),
    ({"strategy": "der++", "strategy_settings": {"alpha": float("nan")}}, "alpha: expected a finite number, got nan"),
])
def test_python_arguments_that_are_no_count_or_no_number_are_refused_when_constructed(kwargs, message):
    with pytest.raises(ValueError) as error:
        CondensedReplay(**{"method": "datadam", **kwargs})
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"mem_size": 10**12}, "mem_size 1000000000000 of (1, 8, 8) images needs 238,418.6 GiB, more than the"),
    ({"mem_batch": 10**9}, "mem_batch 1000000000 of (1, 8, 8) images needs 238.4 GiB, more than the"),
])
def test_python_sizes_beyond_the_machine_are_refused_before_training(kwargs, message):
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    strategy = naive(model, [CondensedReplay(method="random", **kwargs)])
    with pytest.raises(ValueError) as error:
        strategy.train(benchmark().train_stream[0])
    assert message in str(error.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # not one step taken


# 6. what a kill left
def test_resuming_a_finished_run_removes_the_temporary_a_killed_memory_picture_left(tmp_path, finished):
    folder = shutil.copytree(finished, tmp_path / "run")
    (folder / "memory.png").unlink(missing_ok=True)  # the draw that was killed never renamed its file
    left = folder / ".memory.png.k9x2ab.tmp"  # what `ccl.io.atomic_write` leaves when SIGKILL stops its write
    left.write_bytes(b"\x89PNG half")
    result = CliRunner().invoke(main, ["run", "--resume", str(folder), "--quiet"])
    assert result.exit_code == 0 and "this run has already finished" in result.output, result.output
    assert not left.exists() and not list(folder.glob(".*.tmp"))
    assert (folder / "memory.png").read_bytes().startswith(b"\x89PNG\r\n")
