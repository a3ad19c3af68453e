"""PAD's soft labels: learned with the images, kept per memory row, replayed, saved, resumed."""
import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from ccl.condense import Condensed, pad
from ccl.memory import DeviceMemoryPlugin, MemoryNeeds, ReplayBatch
from ccl.memory.fillers import Filler
from ccl.experiment import make_config, prepare
from ccl.runner import resume_run, run
from ccl.strategies import DERPlugin, DERSettings, ERPlugin, SoftTargetSettings
from ccl.training import soft_cross_entropy

SOFT = {"expert": "learner", "iterations": 3, "syn_steps": 2, "expert_epochs": 1, "batch_syn": 8,
        "progress_every": 1, "init": "herding", "holdout": 0.25, "soft_labels": True, "lr_labels": 5.0}


def test_soft_cross_entropy_takes_the_soft_rows_and_the_labels_elsewhere():
    output = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 2])
    soft = torch.tensor([[0.0, 1.0, 0.0], [float("nan")] * 3])
    got = soft_cross_entropy(output, labels, soft, temperature=0.5)
    target = torch.softmax(torch.tensor([0.0, 2.0, 0.0]), 0)  # the logits / 0.5
    assert got[0] == pytest.approx(float(-(target * output[0].log_softmax(0)).sum()))
    assert got[1] == pytest.approx(float(F.cross_entropy(output[1:], labels[1:])))
    assert torch.equal(soft_cross_entropy(output, labels, None), F.cross_entropy(output, labels, reduction="none"))


@pytest.mark.parametrize("recompute", [True, False])
def test_the_unroll_carries_the_soft_labels_gradient_as_autograd_does(recompute):
    """The recomputed backward pass gives the soft labels (and images, lr) the gradient
    of the full graph."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    student = pad.FunctionalStudent(net)
    start = pad.flat_parameters(net)
    images = torch.randn(4, 3, 2, 2, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1])  # one context row after the four synthetic ones
    context = torch.randn(1, 3, 2, 2)
    soft = torch.randn(4, 3, requires_grad=True)
    lr = torch.tensor(0.3, requires_grad=True)
    plan = [(torch.tensor([0, 4, 2]), None), (torch.tensor([1, 3, 4]), None), (torch.tensor([2, 0]), None)]
    grads = []
    for mode in (recompute, False):
        x = torch.cat([images, context])
        end = pad.unroll_student(student, start, x, labels, lr, plan, mode, soft)
        grads.append(torch.autograd.grad(end.pow(2).sum(), (images, soft, lr)))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)
    assert grads[0][1].abs().sum() > 0  # the labels do learn


def test_pad_learns_soft_labels_from_the_network_it_matches():
    torch.manual_seed(0)
    real = torch.randn(40, 3, 8, 8)
    labels = torch.arange(2).repeat_interleave(20)
    base = dict(iterations=4, syn_steps=3, expert_epochs=1, max_start_epoch=1, expert_train_epochs=2,
                num_experts=1, scheduler=False, width=8, depth=2, batch_syn=4, progress_every=1,
                soft_labels=True)
    results = {}
    for rate in (0.0, 50.0):
        torch.manual_seed(1)
        results[rate] = pad.condense(real, labels, {0: 2, 1: 2}, "cpu", pad.PADSettings(**base, lr_labels=rate),
                                     progress=False)
    fixed, learned = results[0.0], results[50.0]
    assert isinstance(learned, Condensed) and learned.soft_labels.shape == (4, 2)
    assert fixed.soft_classes.tolist() == [0, 1]
    assert torch.isfinite(learned.soft_labels).all()
    assert not torch.allclose(fixed.soft_labels, learned.soft_labels)  # they move under optimisation
    # at rate 0 they stay the first expert's final logits on the initial images
    assert (fixed.soft_labels.argmax(1) == fixed[1]).float().mean() >= 0.5
    torch.manual_seed(1)
    hard = pad.condense(real, labels, {0: 2, 1: 2}, "cpu", pad.PADSettings(**{**base, "soft_labels": False}),
                        progress=False)
    assert hard.soft_labels is None


def test_soft_targets_fill_the_classes_the_labelling_network_did_not_have():
    result = Condensed(torch.zeros(2, 1, 2, 2), torch.tensor([3, 5]), torch.tensor([[2.0, -1.0], [0.0, 1.0]]),
                       torch.tensor([3, 5]))
    full = result.soft_targets(6)
    assert full.shape == (2, 6)
    assert full[0, 3] == 2.0 and full[0, 5] == -1.0 and full[0, 0] == -1.0  # the row's smallest
    with pytest.raises(ValueError, match="outputs"):
        result.soft_targets(4)


class _SoftFiller(Filler):
    """Each new class's first real images, with soft targets that say 'class 0'."""

    def fill(self, real, labels, budget, learner, context=None, later=None, trajectory=None):
        keep = torch.cat([torch.nonzero(labels == c).flatten()[:k] for c, k in budget.items()])
        soft = torch.zeros(len(keep), 4)
        soft[:, 0] = 5.0
        return Condensed(real[keep], labels[keep], soft, torch.arange(4))


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))

    embed = forward  # the memory's features are the logits here


def test_the_memory_keeps_soft_targets_per_row_and_er_and_der_replay_them():
    torch.manual_seed(0)
    real = torch.randn(16, 1, 2, 2)
    labels = torch.arange(4).repeat_interleave(4)
    memory = DeviceMemoryPlugin(6, 2, _SoftFiller(torch.device("cpu")),
                                lambda cs: (real[torch.isin(labels, torch.tensor(cs))],
                                            labels[torch.isin(labels, torch.tensor(cs))]), torch.device("cpu"),
                                needs=MemoryNeeds(logits=True))  # records logits for DER
    learner = _Linear()
    der = DERPlugin(memory, DERSettings(alpha=1.0, beta=0.0))
    memory.update([0, 1], learner)
    assert memory.soft.shape == (6, 4) and not memory.soft.isnan().any()
    memory.update([2], learner)  # shrinks the old classes: rows and targets stay together
    assert len(memory.soft) == len(memory.labels) == 6
    assert torch.equal(memory.state()["soft_targets"], memory.soft)

    output = torch.randn(5, 4, requires_grad=True)
    y = torch.tensor([3, 3, 3, 1, 2])  # 3 stream rows, 2 memory rows
    batch = ReplayBatch(stream=3, draws=1, rows=torch.tensor([0, 5]), logits=memory.logits[[0, 5]],
                        soft=memory.soft[[0, 5]])  # as the memory hands it
    er = ERPlugin(memory, SoftTargetSettings(temperature=2.0))
    target = torch.softmax(memory.soft[[0, 5]] / 2.0, 1)
    expected = torch.cat([F.cross_entropy(output[:3], y[:3], reduction="none"),
                          -(target * output[3:].log_softmax(1)).sum(1)]).mean()
    assert er.training_loss(output, y, batch, template=lambda: "the template's").item() == pytest.approx(expected.item())

    loss = der(output, y, batch)
    assert float(loss) == pytest.approx(float(F.cross_entropy(output[:3], y[:3]) + F.mse_loss(output[3:], memory.soft[[0, 5]])))


def test_er_leaves_the_criterion_alone_without_soft_targets():
    memory = DeviceMemoryPlugin(4, 2, None, None, torch.device("cpu"))
    batch = ReplayBatch(stream=2, draws=1, rows=torch.tensor([0, 1]))  # rows without soft targets
    loss = ERPlugin(memory, SoftTargetSettings()).training_loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]),
                                                                 batch, template=lambda: "the template's")
    assert loss == "the template's"


def test_a_run_with_soft_labels_saves_them_and_resumes_to_the_same_matrix(tmp_path, tiny_run, interrupted_run):
    settings = dict(**{**tiny_run, "epochs": 2}, memory="pad", memory_settings=SOFT)
    full = run(prepare(make_config(**settings)), tmp_path / "full", progress=False)
    cut = interrupted_run(prepare(make_config(**settings)), tmp_path / "cut", after=1)
    ckpt = torch.load(cut / "checkpoint.pt", weights_only=True)
    assert "soft_targets" in ckpt["memory"]
    resume_run(cut, progress=False)
    a, b = (json.loads((d / "results.json").read_text()) for d in (full, cut))
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    saved = torch.load(full / "memory.pt", weights_only=True)
    soft, kept = saved["soft_targets"], [u["kept"] for u in a["memory_updates"]]
    assert soft.shape == (len(saved["labels"]), 10)
    condensed_rows = ~soft.isnan().any(1)
    # rows of a class the guard kept carry soft targets; refused ones hold real images
    kept_classes = {int(c) for k in kept for c, v in k.items() if v == "condensed"}
    assert set(saved["labels"][condensed_rows].tolist()) <= kept_classes
    assert all("heldout_ratio" in u for u in a["memory_updates"])


def test_condense_saves_soft_labels_and_evaluate_trains_on_them(tmp_path):
    from ccl.cli import main
    out = tmp_path / "set.pt"
    sets = ["--method", "pad", "--dataset", "digits", "--ipc", "2", "--classes", "0,1", "--train-per-class", "20",
            "--quiet", "--out", str(out)]
    for kv in ("iterations=2", "syn_steps=2", "expert_epochs=1", "max_start_epoch=0", "expert_train_epochs=1",
               "num_experts=1", "scheduler=false", "width=8", "depth=2", "soft_labels=true", "init=real"):
        sets += ["--set", kv]
    result = CliRunner().invoke(main, ["condense", *sets])
    assert result.exit_code == 0, result.output
    saved = torch.load(out, weights_only=True)
    assert saved["soft_labels"].shape == (4, 10)
    result = CliRunner().invoke(main, ["evaluate", str(out), "--epochs", "2", "--networks", "1", "--quiet",
                                       "--set", "width=8", "--set", "depth=2"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".eval.json").read_text())["soft_labels"] is True
    saved["soft_labels"] = saved["soft_labels"][:, :3]  # not the data set's classes
    torch.save(saved, out)
    result = CliRunner().invoke(main, ["evaluate", str(out), "--epochs", "1", "--networks", "1", "--quiet"])
    assert result.exit_code != 0 and "fit" in result.output


def test_herding_soft_stores_the_learners_logits_as_soft_targets(tmp_path, tiny_run):
    from ccl.memory.fillers import SoftHerdingFiller, herding_exemplars
    torch.manual_seed(0)
    real, labels, learner = torch.randn(12, 1, 2, 2), torch.arange(3).repeat_interleave(4), _Linear()
    filled = SoftHerdingFiller(torch.device("cpu")).fill(real, labels, {0: 2, 2: 2}, learner)
    images, image_labels = herding_exemplars(real, labels, {0: 2, 2: 2}, learner)
    assert torch.equal(filled[0], images) and torch.equal(filled[1], image_labels)
    assert torch.allclose(filled.soft_targets(4), learner(images))
    run_dir = run(prepare(make_config(**tiny_run, memory="herding-soft")), tmp_path, progress=False)
    saved = torch.load(run_dir / "memory.pt", weights_only=True)
    assert saved["soft_targets"].shape == (len(saved["labels"]), 10) and torch.isfinite(saved["soft_targets"]).all()


def test_pad_replays_with_its_replay_preset_and_gdumb_keeps_the_experts(tiny_run):
    prepared = prepare(make_config(**tiny_run, memory="pad"))
    replay = prepared.settings
    assert (replay.expert, replay.soft_labels, replay.lr_labels, prepared.filler_settings.holdout,
            replay.iterations) == ("learner", True, 0.0, 0.0, 10)
    alone = prepare(make_config(**tiny_run, memory="pad", strategy="gdumb")).settings
    assert alone.expert == "trained" and not alone.soft_labels
    chosen = prepare(make_config(**tiny_run, memory="pad", memory_config="pad")).settings
    assert chosen.expert == "trained"
