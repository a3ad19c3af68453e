"""Replay strategies: each loss equals its definition on a hand-made batch; stored logits
follow the memory through shrinking, checkpoints and resume; every strategy runs with
every on-device memory."""
import json

import pytest
import torch
import torch.nn.functional as F

from ccl.memory import DeviceMemoryPlugin
from ccl.memory.fillers import RandomFiller
from ccl.runner import make_config, prepare, resume_run, run
from ccl.strategies import ACEPlugin, DERPlugin, STRATEGIES
from ccl.errors import CclError


def memory_with(images, labels, logits, mem_batch):
    memory = DeviceMemoryPlugin(len(labels), mem_batch, RandomFiller(torch.device("cpu")), None, torch.device("cpu"))
    memory.images, memory.labels, memory.logits = images, labels, logits
    return memory


def test_ace_masks_the_stream_logits_to_the_current_batch_classes():
    torch.manual_seed(0)
    memory = memory_with(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), torch.empty(0), mem_batch=2)
    plugin = ACEPlugin(memory)
    memory.last_draw = torch.tensor([1, 2])
    out, y = torch.randn(5, 4), torch.tensor([2, 3, 3, 1, 0])  # 3 stream samples (classes 2, 3), 2 replayed
    # stream: cross-entropy over the logits of classes {2, 3} only; memory: over all four
    stream = F.cross_entropy(out[:3, 2:], y[:3] - 2)
    replay = F.cross_entropy(out[3:], y[3:])
    assert plugin(out, y).item() == pytest.approx(((stream + replay) / 2).item(), rel=1e-6)
    # before anything is in memory: the plain cross-entropy
    memory.last_draw = None
    assert plugin(out[:3], y[:3]).item() == pytest.approx(F.cross_entropy(out[:3], y[:3]).item(), rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_der_adds_the_mse_to_the_stored_logits(beta):
    torch.manual_seed(0)
    stored = torch.randn(6, 4)
    memory = memory_with(torch.zeros(6, 1, 2, 2), torch.tensor([0, 1, 0, 1, 0, 1]), stored, mem_batch=2)
    plugin = DERPlugin(memory, alpha=0.3, beta=beta)
    assert memory.draws == (2 if beta else 1) and memory.record_logits
    memory.last_draw = torch.tensor([4, 1, 0, 3])[: 2 * memory.draws]
    n = 3 + 2 * memory.draws
    out, y = torch.randn(n, 4), torch.tensor([2, 3, 3, 0, 1, 0, 1])[:n]
    expected = F.cross_entropy(out[:3], y[:3]) + 0.3 * ((out[3:5] - stored[[4, 1]]) ** 2).mean()
    if beta:
        expected = expected + beta * F.cross_entropy(out[5:], y[5:])
    assert plugin(out, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_stored_logits_survive_shrinking_and_resume(tmp_path, tiny_run):
    cfg = dict(tiny_run, memory="herding", strategy="der++", mem_dtype="uint8")
    full = run(prepare(make_config(**cfg)), tmp_path / "full", progress=False)
    memory = torch.load(full / "memory.pt", weights_only=True)
    assert memory["logits"].shape == (20, 10) and memory["images"].dtype == torch.uint8
    # the first class's logits were recorded at the end of its experience and kept through
    # every shrink: they are not the final learner's logits of those images
    first = json.loads((full / "results.json").read_text())["experience_classes"][0][0]
    assert (memory["labels"] == first).sum() == 2

    class Stop(Exception):
        pass

    def stop(i, results):
        if i == 2:
            raise Stop

    with pytest.raises(Stop):
        run(prepare(make_config(**cfg)), tmp_path / "cut", progress=False, on_experience=stop)
    (cut,) = (tmp_path / "cut").iterdir()
    resume_run(cut, progress=False)
    resumed = torch.load(cut / "memory.pt", weights_only=True)
    assert torch.equal(resumed["logits"], memory["logits"])
    a, b = (json.loads((d / "results.json").read_text()) for d in (full, cut))
    assert a["accuracy_matrix"] == b["accuracy_matrix"]


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES.names() if s != "er"])
@pytest.mark.parametrize("memory", ["random", "herding", "datadam"])
def test_every_strategy_runs_with_every_memory(tmp_path, tiny_run, strategy, memory):
    settings = {"iterations": 2, "width": 8, "progress_every": 1} if memory == "datadam" else {}
    run_dir = run(prepare(make_config(**tiny_run, memory=memory, strategy=strategy, memory_settings=settings)),
                  tmp_path, progress=False)
    r = json.loads((run_dir / "results.json").read_text())
    assert 0.0 < r["final_average_accuracy"] <= 1.0
    assert json.loads((run_dir / "config.json").read_text())["run"]["strategy"] == strategy


@pytest.mark.parametrize("changes, message", [
    ({"strategy": "icarl2"}, "unknown strategy 'icarl2'"),
    ({"strategy": "der", "memory": "reservoir"}, "replays from the on-device memory"),
    ({"strategy": "er-ace", "protocol": "gdumb"}, "replays from the on-device memory"),
])
def test_strategies_that_cannot_work_are_one_line_errors(tiny_run, changes, message):
    with pytest.raises(CclError, match=message):
        prepare(make_config(**{**tiny_run, **changes}))
