"""The public Python API, `ccl.CondensedReplay`, inside Avalanche's own `Naive`: the
README's example runs as written; a plain nn.Sequential works (features from its last
nn.Linear) and a model without features is refused before training; the buffer stays
within its budget and class-balanced on the strategy's device; it composes with ccl's
strategies; task labels other than 0 and bad arguments are refused in one line."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ccl import CondensedReplay
from ccl.condense.datadam import DataDAMSettings
from ccl.guards import Diverged
from ccl.memory import ReservoirMemoryPlugin
from ccl.memory.slots import slots_per_class
from ccl.replay import WithEmbed
from ccl.strategies import DERPlugin

pytestmark = pytest.mark.filterwarnings("ignore:No loggers specified")  # Avalanche's, for loggers=[]

README = Path(__file__).parent.parent / "README.md"
TINY_DATADAM = {"iterations": 3, "width": 16, "real_batch": 8, "progress_every": 1}
TINY_PAD_LEARNER = {"expert": "learner", "iterations": 2, "width": 8, "syn_steps": 2, "batch_syn": 32,
                    "expert_epochs": 1, "progress_every": 1, "holdout": 0.0}  # matches the plain model's training


def readme_example() -> str:
    section = README.read_text().split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written_and_prints_what_the_readme_says():
    """In a fresh interpreter, as a user runs it: only there do import-time warnings show
    (qpsolvers' "no QP solver found" through Avalanche), and the example must print its
    one line and nothing on stderr (no third-party warning, which ccl filters on import)."""
    code = readme_example()
    assert len(code.splitlines()) < 25
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=README.parent, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", out.stderr
    printed = out.stdout.strip().splitlines()[-1]
    forgetting = float(re.fullmatch(r"forgetting (\d\.\d{3})", printed).group(1))
    section = README.read_text().split("## Use from Python", 1)[1]
    said = float(re.search(r"It prints `forgetting (\d\.\d{3})`", section).group(1))
    assert abs(forgetting - said) < 0.05, (forgetting, said)  # float rounding may differ by thread count
    assert forgetting < 0.5  # without the plugin, 0.931: the memory holds the old classes


def test_the_docs_example_beside_lwf_runs_as_written():
    section = (Path(__file__).parent.parent / "docs" / "python.md").read_text().split(
        "## Other Avalanche plugins beside it", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    torch.manual_seed(0)
    model = mlp()
    names = {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.05),
             "bench": benchmark(experiences=2)}
    exec(compile(code, "docs/python.md", "exec"), names)
    replay, lwf = names["strategy"].plugins[:2]
    assert len(replay.memory.labels) == 50 and len(replay.memory.classes) == 6  # 9 9 8 8 8 8 slots
    assert lwf.lwf.prev_model is not None  # LwF took its teacher after the first experience


def benchmark(task_labels: bool = False, classes: int = 6, experiences: int = 3):
    from avalanche.benchmarks import nc_benchmark
    g = torch.Generator().manual_seed(0)
    y = torch.arange(classes).repeat_interleave(30)  # 30 images a class
    x = torch.randn(len(y), 1, 8, 8, generator=g) + y[:, None, None, None] * 0.5  # (N, 1, 8, 8)
    return nc_benchmark(TensorDataset(x, y), TensorDataset(x, y), n_experiences=experiences,
                        task_labels=task_labels, seed=0)


def naive(model: nn.Module, plugins, epochs: int = 1, **kwargs):
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=16,
                 train_epochs=epochs, plugins=plugins, evaluator=EvaluationPlugin(loggers=[]), device="cpu", **kwargs)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 6))


@pytest.mark.parametrize("method, settings", [("herding", None), ("datadam", TINY_DATADAM), ("pad", TINY_PAD_LEARNER),
                                              ("random", None)])
def test_a_plain_sequential_keeps_a_class_balanced_memory_within_its_budget(method, settings):
    torch.manual_seed(0)
    bench = benchmark()
    replay = CondensedReplay(mem_size=14, method=method, settings=settings, mem_batch=8)
    strategy = naive(mlp(), [replay])
    seen: list[int] = []
    for experience in bench.train_stream:
        strategy.train(experience)
        seen += [c for c in experience.classes_in_this_experience if c not in seen]
        memory = replay.memory
        assert memory.images.device == torch.device(strategy.device)
        assert len(memory.labels) <= 14
        counts = torch.bincount(memory.labels, minlength=6)
        assert {c: int(counts[c]) for c in seen} == slots_per_class(14, memory.classes)  # 7, then 4 4 3 3 ...
        assert counts.sum() == 14 and torch.isfinite(memory.images).all()
        assert set(memory.labels.tolist()) == set(seen)
    assert memory.update_log[0]["new_classes"] == sorted(bench.train_stream[0].classes_in_this_experience)


def test_datadam_matches_attention_at_a_torchvision_resnet18s_stages():
    """`network = "learner"`: the random networks are the learner's own architecture, a
    torchvision ResNet-18 as CIFAR papers adapt it (3x3 stem, no max-pool), on tiny 32x32
    data; the SAM term matched its layer1-3, and the learner itself is what trained."""
    from torchvision.models import resnet18
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat_interleave(4)  # 4 images a class
    x = torch.randn(len(y), 3, 32, 32, generator=g) + y[:, None, None, None] * 0.5  # (16, 3, 32, 32)
    from avalanche.benchmarks import nc_benchmark
    bench = nc_benchmark(TensorDataset(x, y), TensorDataset(x, y), n_experiences=2, task_labels=False, seed=0)
    model = resnet18(num_classes=4)
    model.conv1, model.maxpool = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False), nn.Identity()
    replay = CondensedReplay(mem_size=4, method="datadam", mem_batch=2, settings={
        "network": "learner", "iterations": 1, "real_batch": 2, "guide_weight": 0.0, "progress_every": 1})
    strategy = naive(model, [replay])
    for experience in bench.train_stream:
        strategy.train(experience)
    memory = replay.memory
    assert [log["stages"] for log in memory.update_log] == [["layer1", "layer2", "layer3"]] * 2
    assert torch.bincount(memory.labels, minlength=4).tolist() == [1, 1, 1, 1]
    assert memory.images.shape == (4, 3, 32, 32) and torch.isfinite(memory.images).all()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # the hooks were on copies


def test_the_memory_holds_the_experiences_own_images():
    torch.manual_seed(0)
    bench = benchmark(experiences=2)
    replay = CondensedReplay(mem_size=6, method="random", augment="none")
    naive(mlp(), [replay]).train(bench.train_stream[0])
    x = torch.stack([bench.train_stream[0].dataset[i][0] for i in range(len(bench.train_stream[0].dataset))])
    for image in replay.memory.images:
        assert (x == image).flatten(1).all(1).any()  # a real image of the experience, not augmented


def test_features_of_a_plain_model_are_the_input_of_its_last_linear_layer():
    model = mlp()
    x = torch.randn(5, 1, 8, 8)
    features = WithEmbed(model).embed(x)
    assert torch.equal(features, model[:3](x))  # (5, 32): after the ReLU
    assert not model[3]._forward_hooks  # the hook lived for the call only
    assert torch.equal(WithEmbed(model)(x), model(x))


def test_a_model_without_features_is_refused_in_one_line_before_it_trains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # no Linear, no embed
    before = [p.detach().clone() for p in model.parameters()]
    strategy = naive(model, [CondensedReplay(mem_size=12, method="herding")])
    with pytest.raises(ValueError, match="embed") as error:
        strategy.train(benchmark().train_stream[0])
    assert "\n" not in str(error.value) and "Sequential" in str(error.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # not one step taken
    # random images need no features: the same model trains
    naive(model, [CondensedReplay(mem_size=12, method="random")]).train(benchmark().train_stream[0])


def test_it_composes_with_der_plus_plus():
    from avalanche.core import SupervisedPlugin

    class Spy(SupervisedPlugin):  # after CondensedReplay: sees the minibatch with memory rows
        sizes: list[int] = []

        def before_backward(self, strategy, **kwargs):
            self.sizes.append(len(strategy.mb_y))

    torch.manual_seed(0)
    bench = benchmark()
    replay = CondensedReplay(mem_size=12, method="herding", mem_batch=4, strategy="der++",
                             strategy_settings={"alpha": 0.2})
    spy = Spy()
    strategy = naive(mlp(), [replay, spy])
    for experience in bench.train_stream:
        strategy.train(experience)
    assert isinstance(replay.loss, DERPlugin) and (replay.loss.alpha, replay.loss.beta) == (0.2, 0.5)
    memory = replay.memory
    assert memory.draws == 2 and memory.logits.shape == (len(memory.labels), 6)  # DER's logits kept per row
    assert 16 + 2 * 4 in spy.sizes  # a stream batch of 16, and two memory batches of 4 (DER++)


@pytest.mark.parametrize("strategy", ["er-ace", "a-gem", "bic", "der"])
def test_every_strategy_that_replays_beside_the_stream_runs(strategy):
    torch.manual_seed(0)
    bench = benchmark(experiences=2)
    replay = CondensedReplay(mem_size=8, method="random", mem_batch=4, strategy=strategy)
    strategy_ = naive(mlp(), [replay])
    for experience in bench.train_stream:
        strategy_.train(experience)
        strategy_.eval(bench.test_stream)
    assert len(replay.memory.labels) == 8


def test_the_reservoir_fills_itself_from_the_stream():
    torch.manual_seed(0)
    replay = CondensedReplay(mem_size=10, method="reservoir", strategy="der")
    naive(mlp(), [replay]).train(benchmark().train_stream[0])
    assert len(replay.memory.labels) == 10 and replay.memory.logits.shape == (10, 6)


def test_task_labels_other_than_zero_are_refused():
    strategy = naive(mlp(), [CondensedReplay(mem_size=12, method="random")])
    bench = benchmark(task_labels=True)
    strategy.train(bench.train_stream[0])  # task 0
    with pytest.raises(ValueError, match="class-incremental"):
        strategy.train(bench.train_stream[1])


def test_a_budget_below_the_streams_classes_is_refused_before_training():
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    strategy = naive(model, [CondensedReplay(mem_size=5, method="random")])
    with pytest.raises(ValueError, match="mem_size 5 cannot give each of the 6 classes of the stream a slot"):
        strategy.train(benchmark().train_stream[0])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_settings_resolve_over_the_shipped_preset():
    replay = CondensedReplay(method="datadam", settings={"iterations": 7})
    assert replay.settings.iterations == 7 and replay.settings.init == "herding"  # the rest from configs/datadam.toml
    pad = CondensedReplay(method="pad")
    assert pad.settings.expert == "learner" and pad.settings.soft_labels  # configs/pad-replay.toml, as ccl run
    dm = CondensedReplay(method="dm", settings=DataDAMSettings(sam_weight=5.0))
    assert dm.settings.sam_weight == 0.0  # DM is DataDAM without attention, whatever it is given


def test_the_method_and_strategy_errors_offer_only_what_the_plugin_takes():
    on_device = "reservoir, class-balanced-reservoir, online-datadam, random, herding, herding-soft, dm, datadam, mtt, pad"
    for method in ("nope", "none", "avalanche-reservoir", "joint"):
        with pytest.raises(ValueError) as error:
            CondensedReplay(method=method)
        assert str(error.value).endswith(f"choose one of: {on_device}")
    beside = "er, a-gem, bic, der, der++, er-ace, icarl, or None (the template's own criterion)"
    for strategy in ("nope", "gdumb"):
        with pytest.raises(ValueError) as error:
            CondensedReplay(method="random", strategy=strategy)
        assert str(error.value).endswith(f"choose one of: {beside}") and "\n" not in str(error.value)
    for name in on_device.split(", "):  # and each choice offered is taken
        CondensedReplay(method=name)
    for name in beside.split(", or")[0].split(", "):
        CondensedReplay(method="random", strategy=name)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "nope"}, "'nope' is not a memory ccl has; choose one of"),
    ({"method": "avalanche-reservoir"}, "not an on-device memory"),
    ({"method": "random", "settings": {"iterations": 3}}, "takes no settings"),
    ({"method": "datadam", "settings": {"nope": 1}}, "unknown key 'nope'"),
    ({"method": "datadam", "settings": 3}, "a dict or a DataDAMSettings"),
    ({"strategy": "gdumb"}, "does not replay beside the stream"),
    ({"strategy": "der++", "strategy_settings": {"alpha": -1.0}}, "must not be negative"),
    ({"augment": "blur"}, "augment 'blur'"),
    ({"mem_size": 0}, "mem_size"),
])
def test_bad_arguments_are_refused_when_constructed(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        CondensedReplay(**kwargs)


def test_icarl_needs_an_embed_method():
    strategy = naive(mlp(), [CondensedReplay(mem_size=12, method="random", strategy="icarl")])
    with pytest.raises(ValueError, match="icarl.*embed"):
        strategy.train(benchmark().train_stream[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_memory_lives_on_the_strategys_device():
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin
    torch.manual_seed(0)
    model = mlp()
    replay = CondensedReplay(mem_size=12, method="datadam", settings=TINY_DATADAM, strategy="der++")
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=16,
                     plugins=[replay], evaluator=EvaluationPlugin(loggers=[]), device="cuda")
    for experience in benchmark().train_stream:
        strategy.train(experience)
    assert replay.memory.images.device.type == "cuda" and replay.memory.logits.device.type == "cuda"


class LossParts:
    """Avalanche plugin, last in the list: at every step of the second experience on,
    the step's `strategy.loss` beside ccl's replay loss and `penalty(strategy)` computed
    again on the same minibatch, and which criterion the template holds."""

    def __new__(cls, replay: CondensedReplay, penalty):
        from avalanche.core import SupervisedPlugin

        class Spy(SupervisedPlugin):
            steps: list[tuple[float, float, float]] = []
            criteria: set[type] = set()
            evaluated: list[tuple[float, float]] = []

            def before_backward(self, strategy, **kwargs):
                self.criteria.add(type(strategy._criterion))
                if strategy.clock.train_exp_counter == 0:
                    return
                with torch.no_grad():
                    replayed = replay.loss(strategy.mb_output, strategy.mb_y, strategy.replay_batch)
                    self.steps.append((strategy.loss.item(), replayed.item(), float(penalty(strategy))))

            def after_eval_iteration(self, strategy, **kwargs):
                plain = torch.nn.functional.cross_entropy(strategy.mb_output, strategy.mb_y)
                self.evaluated.append((strategy.loss.item(), plain.item()))
        return Spy()


def ewc_penalty(ewc):
    """EWC's `separate` penalty, lambda * sum of F * (theta - theta*)^2 over past experiences."""
    def penalty(strategy):
        total = 0.0
        for exp in range(strategy.clock.train_exp_counter):
            for name, p in strategy.model.named_parameters():
                saved, importance = ewc.saved_params[exp][name], ewc.importances[exp][name]
                total += (importance.expand(p.shape) * (p - saved.expand(p.shape)).pow(2)).sum()
        return ewc.ewc_lambda * total
    return penalty


@pytest.mark.parametrize("other", ["lwf", "ewc"])
@pytest.mark.parametrize("ccl_first", [True, False])
def test_the_replay_loss_and_other_plugins_terms_add_in_either_order(other, ccl_first):
    from avalanche.training.plugins import EWCPlugin, LwFPlugin
    torch.manual_seed(0)
    bench = benchmark(experiences=2)
    replay = CondensedReplay(mem_size=12, method="random", mem_batch=4, strategy="der++")
    if other == "lwf":
        avalanche_plugin = LwFPlugin(alpha=1.0, temperature=2.0)
        penalty = lambda s: avalanche_plugin.lwf(s.mb_x, s.mb_output, s.model)  # noqa: E731
    else:
        avalanche_plugin = EWCPlugin(ewc_lambda=1.0)
        penalty = ewc_penalty(avalanche_plugin)
    spy = LossParts(replay, penalty)
    plugins = [replay, avalanche_plugin] if ccl_first else [avalanche_plugin, replay]
    strategy = naive(mlp(), plugins + [spy], epochs=2, eval_every=1)
    for experience in bench.train_stream:
        strategy.train(experience)
        assert "criterion" not in vars(strategy)  # the template's own again after training
    assert spy.steps and spy.criteria == {torch.nn.CrossEntropyLoss}  # what other plugins call is untouched
    for loss, replayed, added in spy.steps:
        assert loss == pytest.approx(replayed + added, rel=1e-5, abs=1e-6)
    # the other plugin's term counts (LwF's is 0 at the first step: the learner is its teacher)
    assert sum(added for *_, added in spy.steps) > 1e-3 * sum(replayed for _, replayed, _ in spy.steps)
    # evaluation inside train() (eval_every=1) keeps the template's plain cross-entropy
    assert spy.evaluated and all(loss == pytest.approx(plain, rel=1e-6) for loss, plain in spy.evaluated)


def avalanche_replay(model: nn.Module, plugins):
    from avalanche.training import Replay
    from avalanche.training.plugins import EvaluationPlugin
    return Replay(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), criterion=nn.CrossEntropyLoss(),
                  mem_size=20, train_mb_size=16, plugins=plugins, evaluator=EvaluationPlugin(loggers=[]), device="cpu")


@pytest.mark.parametrize("build, message", [
    (lambda model, replay: avalanche_replay(model, [replay]),
     "Avalanche's Replay strategy replays a memory of its own: with CondensedReplay every step would replay twice; "
     "give CondensedReplay to Naive instead"),
    (lambda model, replay: naive(model, [replay, __import__("avalanche.training.plugins").training.plugins.ReplayPlugin(20)]),
     "Avalanche's ReplayPlugin replays a memory of its own: beside CondensedReplay every step would replay twice; "
     "keep one of the two"),
    (lambda model, replay: naive(model, [CondensedReplay(mem_size=12, method="random"), replay]),
     "a second ccl memory (CondensedReplay) beside CondensedReplay would replay twice a step: keep one"),
    (lambda model, replay: naive(model, [replay, ReservoirMemoryPlugin(12, 4, torch.device("cpu"))]),
     "a second ccl memory (ReservoirMemoryPlugin) beside CondensedReplay would replay twice a step: keep one"),
], ids=["inside Replay", "beside ReplayPlugin", "two CondensedReplay", "beside a ccl memory plugin"])
def test_a_second_replay_is_refused_in_one_line_before_training(build, message):
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    strategy = build(model, CondensedReplay(mem_size=12, method="random"))
    with pytest.raises(ValueError) as error:
        strategy.train(benchmark().train_stream[0])
    assert str(error.value) == message
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # not one step taken


@pytest.mark.parametrize("poison, loss", [(float("nan"), "nan"), (-float("inf"), "inf")])
def test_a_loss_that_is_no_longer_a_number_stops_training_as_ccl_run_does(poison, loss):
    model, experience = mlp(), benchmark().train_stream[0]
    with torch.no_grad():  # one class's logit: NaN, or -inf (an infinite cross-entropy for its images)
        model[3].bias[experience.classes_in_this_experience[0]] = poison
    replay = CondensedReplay(mem_size=12, method="random", mem_batch=4, strategy="der++")
    strategy = naive(model, [replay])
    with pytest.raises(Diverged, match=rf"^the training loss became {loss} in experience 0 by step 1: "
                                       r"try a smaller learning rate$"):
        strategy.train(experience)
    assert len(replay.memory.labels) == 0  # stopped before the experience's memory update
