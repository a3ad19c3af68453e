"""The stream reservoir (`--memory reservoir`, the ER and DER papers' buffer): a uniform
sample of the whole stream, the logits of the moment a sample entered, distinct replay
draws, and a state that survives resume; A-GEM's projection."""
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ccl.memory import MemoryNeeds, ReplayBatch, ReservoirMemoryPlugin
from ccl.memory.buffers import last_wins, reservoir_slots
from ccl.models import build_learner
from ccl.experiment import make_config, prepare
from ccl.runner import resume_run, run
from ccl.strategies import AGEMPlugin, DERPlugin


def test_reservoir_slots_keep_a_uniform_sample_of_the_stream():
    torch.manual_seed(0)
    n, cap, batch, draws = 60, 10, 8, 600
    kept = torch.zeros(n)
    for _ in range(draws):
        rows = torch.full((cap,), -1)
        for start in range(0, n, batch):
            nth = torch.arange(start + 1, min(start + batch, n) + 1)
            slots = last_wins(reservoir_slots(nth, cap))
            rows[slots[slots >= 0]] = (nth - 1)[slots >= 0]
        assert (rows >= 0).all() and len(rows.unique()) == cap  # full, no sample twice
        kept[rows] += 1
    rate = kept / draws  # each sample should be kept with probability cap / n = 1/6
    assert rate.mean().item() == pytest.approx(cap / n)
    assert (rate - cap / n).abs().max() < 0.07  # ~4.5 standard deviations of a rate over 600 draws
    early, late = rate[: n // 2].mean(), rate[n // 2:].mean()
    assert abs(early - late) < 0.02  # neither end of the stream favoured


def _step(memory, model, x, y, loss=None):
    """What Avalanche does around the memory's hooks for one minibatch (without the
    optimiser step itself); `loss(output, y, batch)`, if given, is computed where Avalanche
    computes the loss, and the strategy gets it as `.loss`."""
    strategy = SimpleNamespace(mbatch=[x, y, torch.zeros_like(y)])
    memory.before_training_iteration(strategy)
    memory.before_forward(strategy)
    strategy.mb_output = model(strategy.mbatch[0])
    memory.after_forward(strategy)
    strategy.loss = loss(strategy.mb_output, strategy.mbatch[1], strategy.replay_batch) if loss is not None else None
    memory.after_update(strategy)
    return strategy


def test_a_sample_enters_with_its_logits_of_that_moment_and_replay_draws_distinct_samples():
    torch.manual_seed(0)
    model = build_learner("convnet", 4, (1, 8, 8), width=8, depth=2)
    memory = ReservoirMemoryPlugin(6, 4, torch.device("cpu"), needs=MemoryNeeds(logits=True))  # DER's
    DERPlugin(memory)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    strategy = _step(memory, model, x, y)
    out = strategy.mb_output
    assert strategy.replay_batch is None  # nothing to replay before the first sample
    assert torch.equal(memory.images, x) and torch.equal(memory.labels, y)
    assert torch.equal(memory.logits, out.detach())  # the outputs of the forward that saw them
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # the learner moves on: stored logits must not
    x2 = torch.randn(4, 1, 8, 8)
    strategy = _step(memory, model, x2, torch.tensor([0, 1, 2, 3]))
    out2, drawn = strategy.mb_output, strategy.replay_batch.rows
    assert len(drawn) == 4 and len(drawn.unique()) == 4  # without replacement
    for image, logits in zip(memory.images, memory.logits):  # each row: the logits its image entered with
        first = (x == image).flatten(1).all(1)
        entered = out[first] if first.any() else out2[:4][(x2 == image).flatten(1).all(1)]  # stream rows first
        assert torch.equal(logits, entered.detach().squeeze(0))
    assert len(memory.labels) == 6 and memory.seen == 8 and len(out2) == 8  # 4 streamed, 4 replayed


def test_a_replayed_row_overwritten_in_the_same_step_keeps_its_old_logits_as_target(monkeypatch):
    """The step's stream samples enter after the optimiser step (mammoth's add_data after
    opt.step()): DER's loss reads the logits a replayed row entered with, even when a
    stream sample of the same step takes that row."""
    torch.manual_seed(0)
    model = build_learner("convnet", 4, (1, 8, 8), width=8, depth=2)
    memory = ReservoirMemoryPlugin(2, 2, torch.device("cpu"), needs=MemoryNeeds(logits=True))
    der = DERPlugin(memory)  # DER's alpha, no second batch
    _step(memory, model, torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))  # fills both rows: the memory is full
    old_logits, old_images = memory.logits.clone(), memory.images.clone()
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # the learner moves on: a new forward gives other logits
    # Force the reservoir to give row 1 to the first stream sample of the next step; with
    # mem_batch = mem_size every row is replayed, row 1 included.
    monkeypatch.setattr("ccl.memory.buffers.reservoir_slots", lambda nth, cap: torch.tensor([1, -1]))
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([2, 3])
    strategy = _step(memory, model, x, y, loss=der)
    drawn, out = strategy.replay_batch.rows, strategy.mb_output.detach()
    assert sorted(drawn.tolist()) == [0, 1]
    assert torch.equal(memory.images[1], x[0]) and torch.equal(memory.logits[1], out[0])  # row 1 was overwritten
    assert not torch.equal(out[0], old_logits[1])
    expected = F.cross_entropy(out[:2], y) + der.alpha * F.mse_loss(out[2:], old_logits[drawn])
    assert strategy.loss.item() == pytest.approx(expected.item(), rel=1e-6)  # the target it entered with
    assert torch.equal(strategy.mbatch[0][2:][drawn == 1][0], old_images[1])  # and its old image was replayed


def test_a_reservoir_run_resumes_to_the_same_numbers_with_its_logits(tmp_path, tiny_run, interrupted_run):
    settings = dict(**tiny_run, memory="reservoir", strategy="der++")
    full = run(prepare(make_config(**settings)), tmp_path / "full", progress=False)
    cut = interrupted_run(prepare(make_config(**settings)), tmp_path / "cut", after=1)
    resume_run(cut, progress=False)
    a, b = (json.loads((d / "results.json").read_text()) for d in (full, cut))
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    saved = torch.load(full / "memory.pt", weights_only=True)
    assert saved["images"].shape[0] == 20 and saved["logits"].shape == (20, 10)
    counts = torch.bincount(saved["labels"], minlength=10)
    assert (counts > 0).sum() >= 6  # a sample of the whole stream, not the last experience's classes
    assert a["memory_updates"][-1]["seen"] == 5 * 2 * 20 * tiny_run["epochs"]


def test_agem_projects_a_step_that_would_raise_the_memory_loss():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2, bias=False)
    memory = ReservoirMemoryPlugin(4, 2, torch.device("cpu"))
    plugin = AGEMPlugin(memory)
    plugin.before_training_exp(SimpleNamespace(model=model))
    batch = ReplayBatch(stream=2, draws=1, rows=torch.tensor([0, 1]))
    x = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0]])
    y = torch.tensor([0, 0, 1, 1])  # the stream wants class 0, the memory class 1: opposed gradients
    loss = plugin(model(x), y, batch)
    loss.backward()
    plugin.after_backward(None)
    g = model.weight.grad.flatten()
    memory_grad = torch.autograd.grad(F.cross_entropy(model(x[2:]), y[2:]), model.weight)[0].flatten()
    assert torch.dot(g, memory_grad).item() == pytest.approx(0.0, abs=1e-6)  # projected onto the plane
    assert loss.item() == pytest.approx(F.cross_entropy(model(x[:2]), y[:2]).item())  # the stream's own loss


def test_the_reservoir_is_a_sibling_of_the_class_balanced_memory_not_a_subclass():
    """Both are on-device memories (the strategies take either); the reservoir inherits no
    filler, slots or end-of-experience update it cannot use (issue 37)."""
    from ccl.memory import DeviceMemoryPlugin, ReplayMemoryPlugin
    assert issubclass(ReservoirMemoryPlugin, ReplayMemoryPlugin) and issubclass(DeviceMemoryPlugin, ReplayMemoryPlugin)
    assert not issubclass(ReservoirMemoryPlugin, DeviceMemoryPlugin)
    memory = ReservoirMemoryPlugin(4, 2, torch.device("cpu"))
    assert not any(hasattr(memory, name) for name in ("update", "filler", "real_images", "recorder"))
