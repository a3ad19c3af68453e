"""Replay strategies: each loss equals its definition on a hand-made batch; stored logits
follow the memory through shrinking, checkpoints and resume; every strategy runs with
every on-device memory."""
import json

import pytest
import torch
import torch.nn.functional as F

from ccl.memory import MEMORIES, DeviceMemoryPlugin, MemoryNeeds, ReplayBatch
from ccl.memory.fillers import RandomFiller
from ccl.memory.rows import Rows
from ccl.experiment import make_config, prepare
from ccl.runner import resume_run, run
from ccl.strategies import ACEPlugin, DERPlugin, DERSettings, STRATEGIES
from ccl.errors import CclError


def memory_with(images, labels, logits, mem_batch, needs=MemoryNeeds()):
    memory = DeviceMemoryPlugin(len(labels), mem_batch, RandomFiller(torch.device("cpu")), None, torch.device("cpu"),
                                needs=needs)
    memory.store.keep(Rows(images, labels, logits))
    return memory


def test_ace_hides_old_classes_absent_from_the_stream_batch_and_sums_the_terms_as_mammoth():
    torch.manual_seed(0)
    memory = memory_with(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), torch.empty(0), mem_batch=2)
    memory.classes = [0, 1]  # the earlier experiences' classes
    plugin = ACEPlugin(memory)
    batch = ReplayBatch(stream=3, draws=1, rows=torch.tensor([1, 2]))
    out, y = torch.randn(5, 5), torch.tensor([2, 3, 3, 1, 0])  # 3 stream samples (classes 2, 3), 2 replayed
    # stream: cross-entropy over every logit but the old classes 0 and 1 (the unseen class
    # 4 stays, as in mammoth's mask); memory: over all five; summed, as mammoth sums them
    stream = F.cross_entropy(out[:3, 2:], y[:3] - 2)
    replay = F.cross_entropy(out[3:], y[3:])
    assert plugin(out, y, batch).item() == pytest.approx((stream + replay).item(), rel=1e-6)
    # an old class present in the stream batch keeps its logit
    y_old = torch.tensor([2, 3, 1, 1, 0])
    stream = F.cross_entropy(out[:3, 1:], y_old[:3] - 1)
    assert plugin(out, y_old, batch).item() == pytest.approx((stream + F.cross_entropy(out[3:], y_old[3:])).item(),
                                                             rel=1e-6)
    # before anything is in memory: the plain cross-entropy
    assert plugin(out[:3], y[:3], None).item() == pytest.approx(F.cross_entropy(out[:3], y[:3]).item(), rel=1e-6)


def test_ace_replays_from_the_second_experience_on_as_mammoth():
    """mammoth's ER-ACE neither masks nor replays while `current_task` is 0. ccl's
    reservoir already holds the first experience's own samples then; under ER-ACE it
    draws none of them until that experience has ended, and the loss is the stream's
    plain cross-entropy."""
    from types import SimpleNamespace

    from ccl.memory import ReservoirMemoryPlugin
    from ccl.strategies.er_ace import ace_memory
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4))
    memory = ReservoirMemoryPlugin(4, 2, torch.device("cpu"), needs=ace_memory(None))
    plugin = ACEPlugin(memory)

    def step(x, y):
        strategy = SimpleNamespace(mbatch=[x, y, torch.zeros_like(y)])
        for hook in ("before_training_iteration", "before_forward"):
            getattr(memory, hook)(strategy)
        strategy.mb_output = model(strategy.mbatch[0])
        memory.after_forward(strategy)
        loss = plugin(strategy.mb_output, strategy.mbatch[1], strategy.replay_batch)
        memory.after_update(strategy)
        return strategy, loss

    first = torch.tensor([0, 1, 0, 1])
    for _ in range(2):  # the first experience: the memory fills, but nothing is replayed
        x = torch.randn(4, 1, 2, 2)
        strategy, loss = step(x, first)
        assert strategy.replay_batch is None and len(strategy.mbatch[0]) == 4
        assert loss.item() == pytest.approx(F.cross_entropy(model(x), first).item(), rel=1e-6)
    assert len(memory.labels) == 4  # full of the first experience's samples
    memory.after_training_exp(SimpleNamespace(experience=SimpleNamespace(classes_in_this_experience=[0, 1])))
    x, y = torch.randn(4, 1, 2, 2), torch.tensor([2, 3, 2, 3])  # the second experience: masked stream + memory
    strategy, loss = step(x, y)
    batch = strategy.replay_batch
    assert (batch.stream, len(batch.rows)) == (4, 2) and len(strategy.mbatch[0]) == 6
    out = strategy.mb_output.detach()
    expected = F.cross_entropy(out[:4, 2:], y - 2) + F.cross_entropy(out[4:], strategy.mbatch[1][4:])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_der_adds_the_mse_to_the_stored_logits(beta):
    torch.manual_seed(0)
    stored = torch.randn(6, 4)
    settings = DERSettings(alpha=0.3, beta=beta)
    needs = STRATEGIES.get("der").value.memory_needs(settings)
    assert needs == MemoryNeeds(draws=2 if beta else 1, logits=True)
    memory = memory_with(torch.zeros(6, 1, 2, 2), torch.tensor([0, 1, 0, 1, 0, 1]), stored, mem_batch=2, needs=needs)
    plugin = DERPlugin(memory, settings)
    rows = torch.tensor([4, 1, 0, 3])[: 2 * needs.draws]
    batch = ReplayBatch(stream=3, draws=needs.draws, rows=rows, logits=stored[rows])  # as the memory hands it
    n = 3 + 2 * needs.draws
    out, y = torch.randn(n, 4), torch.tensor([2, 3, 3, 0, 1, 0, 1])[:n]
    expected = F.cross_entropy(out[:3], y[:3]) + 0.3 * ((out[3:5] - stored[[4, 1]]) ** 2).mean()
    if beta:
        expected = expected + beta * F.cross_entropy(out[5:], y[5:])
    assert plugin(out, y, batch).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["random", "reservoir"])
def test_the_memory_is_built_with_what_the_strategy_declares_and_no_strategy_changes_it(kind):
    """Each strategy's registry entry declares what it needs of the memory (memory batches
    per minibatch, the learner's logits per row); the memory takes it when it is built,
    and building the strategy's plugin leaves every attribute of the memory as it was
    (issue 37: the method asks, the memory never learns who asked)."""
    declared = {"der": MemoryNeeds(draws=1, logits=True), "der++": MemoryNeeds(draws=2, logits=True),
                "er-ace": MemoryNeeds(first_experience=False)}
    for name in STRATEGIES.names():
        entry = STRATEGIES.get(name).value
        settings = entry.settings()
        needs = entry.memory_needs(settings)
        assert needs == declared.get(name, MemoryNeeds()), name
        memory = MEMORIES.get(kind).value.make_plugin(mem_size=20, mem_batch=4, device=torch.device("cpu"),
                                                      progress=False, needs=needs)
        assert (memory.draws, memory.record_logits, memory.replay_first_experience) == \
            (needs.draws, needs.logits, needs.first_experience), name
        before = dict(vars(memory))
        if entry.plugin is not None:
            entry.plugin(memory, settings)
        assert vars(memory).keys() == before.keys(), name
        assert [k for k, v in vars(memory).items() if v is not before[k]] == [], name


def test_no_strategy_assigns_an_attribute_of_the_memory():
    """In the source too: no `memory.x = ...` or `self.memory.x = ...` under ccl/strategies."""
    import ast
    from pathlib import Path
    import ccl.strategies

    def is_memory(node):
        return (isinstance(node, ast.Name) and node.id == "memory") or (
            isinstance(node, ast.Attribute) and node.attr == "memory")

    found = []
    for path in Path(ccl.strategies.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in targets:  # memory.x, memory.x[i], self.memory.x.y: down the target's own chain
                while isinstance(t, (ast.Attribute, ast.Subscript)):
                    if isinstance(t, ast.Attribute) and is_memory(t.value):
                        found.append(f"{path.name}:{node.lineno}")
                    t = t.value
    assert found == []


def test_der_refuses_a_memory_built_without_its_needs():
    memory = memory_with(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), torch.empty(0), mem_batch=2)
    plugin = DERPlugin(memory, DERSettings(beta=0.5))
    batch = ReplayBatch(stream=2, draws=1, rows=torch.tensor([0, 1]))  # one draw, no logits: plain replay's
    with pytest.raises(ValueError, match="needs a memory built with"):
        plugin(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), batch)


def test_stored_logits_survive_shrinking_and_resume(tmp_path, tiny_run, interrupted_run):
    cfg = dict(tiny_run, memory="herding", strategy="der++", mem_dtype="uint8")
    full = run(prepare(make_config(**cfg)), tmp_path / "full", progress=False)
    memory = torch.load(full / "memory.pt", weights_only=True)
    assert memory["logits"].shape == (20, 10) and memory["images"].dtype == torch.uint8
    # the first class's logits were recorded at the end of its experience and kept through
    # every shrink: they are not the final learner's logits of those images
    first = json.loads((full / "results.json").read_text())["experience_classes"][0][0]
    assert (memory["labels"] == first).sum() == 2

    cut = interrupted_run(prepare(make_config(**cfg)), tmp_path / "cut", after=2)
    resume_run(cut, progress=False)
    resumed = torch.load(cut / "memory.pt", weights_only=True)
    assert torch.equal(resumed["logits"], memory["logits"])
    a, b = (json.loads((d / "results.json").read_text()) for d in (full, cut))
    assert a["accuracy_matrix"] == b["accuracy_matrix"]


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES.names() if s != "er"])
@pytest.mark.parametrize("memory", ["random", "herding", "datadam"])
def test_every_strategy_runs_with_every_memory(tmp_path, tiny_run, strategy, memory):
    settings = {"iterations": 2, "width": 8, "progress_every": 1} if memory == "datadam" else {}
    hyper = {"epochs": 2} if strategy == "gdumb" else {}  # GDumb's own epochs, not the run's one
    run_dir = run(prepare(make_config(**tiny_run, memory=memory, strategy=strategy, memory_settings=settings,
                                      strategy_settings=hyper)),
                  tmp_path, progress=False)
    r = json.loads((run_dir / "results.json").read_text())
    assert 0.0 < r["final_average_accuracy"] <= 1.0
    assert json.loads((run_dir / "config.json").read_text())["run"]["strategy"] == strategy


@pytest.mark.parametrize("changes, message", [
    ({"strategy": "icarl2"}, "unknown strategy 'icarl2'"),
    ({"strategy": "der", "memory": "avalanche-reservoir"}, "replays from the on-device memory"),
    ({"strategy": "er-ace", "protocol": "gdumb"}, "use --strategy gdumb"),
    ({"strategy": "gdumb", "protocol": "replay"}, "cannot be --protocol replay"),
    ({"stream_slots": True, "memory": "avalanche-reservoir"}, "--stream-slots fills the on-device memory"),
    ({"stream_slots": True, "memory": "reservoir"}, "filled from the stream already"),
    ({"protocol": "gdumb", "memory": "reservoir"}, "trains on a class-balanced memory alone"),
    ({"stream_augment": "crop-flip", "protocol": "gdumb"}, "trains on the memory alone"),
])
def test_strategies_that_cannot_work_are_one_line_errors(tiny_run, changes, message):
    with pytest.raises(CclError, match=message):
        prepare(make_config(**{**tiny_run, **changes}))


def test_stream_reservoir_keeps_a_uniform_sample_of_each_class_in_its_own_rows():
    from ccl.memory.buffers import StreamReservoir
    torch.manual_seed(0)
    hits = torch.zeros(2, 40)  # how often each of class 3's and class 7's samples was kept
    for _ in range(300):
        reservoir = StreamReservoir({3: 4, 7: 2}, offset=5, device=torch.device("cpu"))
        assert reservoir.labels.tolist() == [3, 3, 3, 3, 7, 7] and not reservoir.filled().any()
        rows = torch.full((6,), -1)
        order = torch.randperm(80)  # 40 samples of each class, streamed in minibatches of 16
        y = torch.tensor([3, 7]).repeat_interleave(40)[order]
        ids = torch.arange(40).repeat(2)[order]
        for start in range(0, 80, 16):
            taken = reservoir.offer(y[start:start + 16])
            kept = taken >= 0
            assert ((taken[kept] >= 5) & (taken[kept] < 11)).all() and len(taken[kept].unique()) == int(kept.sum())
            assert (reservoir.labels[taken[kept] - 5] == y[start:start + 16][kept]).all()  # a class's own rows
            rows[taken[kept] - 5] = ids[start:start + 16][kept]
        assert reservoir.filled().all() and reservoir.seen.tolist() == [40, 40]
        hits[0, rows[:4]] += 1
        hits[1, rows[4:]] += 1
    # uniform: every sample kept with probability rows / 40, whenever it streamed by
    expected = torch.tensor([4 / 40, 2 / 40])[:, None] * 300
    assert ((hits - expected).abs() < 5 * expected.sqrt()).all()


def test_stream_slots_replay_new_classes_while_they_stream(tmp_path, tiny_run):
    from avalanche.core import SupervisedPlugin
    seen: list[set] = []  # the classes each experience's replayed samples came from

    class Spy(SupervisedPlugin):
        def before_training_exp(self, strategy, **kw):
            seen.append(set())

        def after_forward(self, strategy, **kw):
            if strategy.replay_batch is not None:
                seen[-1] |= set(strategy.mbatch[1][strategy.replay_batch.stream:].tolist())

    from ccl.runner import _build
    p = prepare(make_config(**tiny_run, strategy="der++", stream_slots=True))
    bench, strategy, parts = _build(p, tmp_path, progress=False)
    memory = parts.memory
    strategy.plugins.append(Spy())
    for i, step in enumerate(bench.train_stream[:2]):
        strategy.train(step)
        # the filler took the stream slots over: a class-balanced memory with a logit per image
        assert len(memory.labels) == 20 == len(memory.logits)
        assert sorted(torch.bincount(memory.labels).tolist())[-1] == 20 // len(memory.classes)
    first, second = (set(c) for c in p.experience_classes[:2])
    assert seen[0] == first  # the first experience replays its own classes as they stream
    assert seen[1] == first | second


def test_stream_augmentation_and_slots_are_recorded_and_run(tmp_path, tiny_run):
    run_dir = run(prepare(make_config(**tiny_run, strategy="er-ace", stream_slots=True, stream_augment="crop-flip")),
                  tmp_path, progress=False)
    recorded = json.loads((run_dir / "config.json").read_text())["run"]
    assert recorded["stream_slots"] is True and recorded["stream_augment"] == "crop-flip"
    assert 0.0 < json.loads((run_dir / "results.json").read_text())["final_average_accuracy"] <= 1.0


class _Tiny(torch.nn.Module):
    """embed: a linear map to 3 features; forward: 4 logits."""

    def __init__(self):
        super().__init__()
        self.body, self.head = torch.nn.Linear(4, 3), torch.nn.Linear(3, 4)

    def embed(self, x):
        return self.body(x.flatten(1))

    def forward(self, x):
        return self.head(self.embed(x))


def test_icarl_distils_old_classes_and_classifies_by_the_nearest_memory_mean():
    from types import SimpleNamespace
    from ccl.strategies import ICaRLPlugin
    torch.manual_seed(0)
    memory = memory_with(torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), torch.empty(0), mem_batch=2)
    memory.classes = [0, 1]
    plugin = ICaRLPlugin(memory)
    model, x = _Tiny(), torch.randn(5, 1, 2, 2)
    strategy = SimpleNamespace(model=model, mb_x=x, _criterion=None,
                               experience=SimpleNamespace(classes_in_this_experience=[2]))
    plugin.before_training_exp(strategy)
    with torch.no_grad():
        model.head.weight.add_(1.0)  # the learner moves on; the copy taken at the start does not
    out, y = model(x), torch.tensor([2, 2, 2, 0, 1])
    old = torch.sigmoid(plugin.old(x))
    targets = torch.stack([old[:, 0], old[:, 1], (y == 2).float()], dim=1)  # class 3 is unseen: left out
    expected = F.binary_cross_entropy_with_logits(out[:, :3], targets)
    assert plugin(out, y, None).item() == pytest.approx(expected.item(), rel=1e-6)

    plugin.before_eval(strategy)
    scorer = strategy.model
    assert scorer is not model
    features = F.normalize(model.embed(memory.images), dim=1)
    means = F.normalize(torch.stack([features[[0, 2]].sum(0), features[[1, 3]].sum(0)]), dim=1)
    query = F.normalize(model.embed(x), dim=1)
    nearest = torch.cdist(query, means).argmin(1)
    assert torch.equal(scorer(x).argmax(1), nearest)  # classes 2 and 3 have no memory: never chosen
    plugin.after_eval(strategy)
    assert strategy.model is model


def test_gdumb_as_a_strategy_is_the_gdumb_protocol(tiny_run):
    cfg = make_config(**tiny_run, strategy="gdumb")
    assert cfg.protocol == "gdumb" and cfg.stream_slots is False
