"""Online continual learning (issue 48, `ccl run --online`): each experience streams once in
minibatches of 10; the memory and the strategy learn what they know from the stream
minibatches alone (ER-ACE's mask: the classes seen so far, as mammoth's task-free ER-ACE),
the boundaries only say when the run evaluates; a run stopped inside the stream resumes to
the uninterrupted matrix; memories and strategies that act at an experience's end are
refused in one line unless the boundaries are revealed; the Python plugin and
`ccl compare` take it too."""
import json
import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import TensorDataset

from ccl import CondensedReplay
from ccl.cli import main
from ccl.errors import CclError
from ccl.estimate import plan_run
from ccl.experiment import make_config, prepare
from ccl.memory import OnlineCondensingMemoryPlugin, OnlineReservoirMemoryPlugin
from ccl.resume import CheckpointClock, RecordedOrder
from ccl.runner import _build, run
from ccl.strategies import ACEPlugin

# split-digits, 3 experiences (4, 3 and 3 classes) of 20 training images a class: 8, 6 and 6
# minibatches of 10
TINY = dict(scenario="split-digits", online=True, experiences=3, train_per_class=20, mem_size=20, width=16)
STEPS = [8, 6, 6]


@pytest.fixture
def streamed(monkeypatch):
    """The labels of every stream minibatch the data loader yields, in order."""
    batches, fetch = [], RecordedOrder.__iter__

    def recording(self):
        for batch in fetch(self):
            batches.append(batch[1].tolist())
            yield batch
    monkeypatch.setattr(RecordedOrder, "__iter__", recording)
    return batches


def test_online_streams_once_in_minibatches_of_ten_over_the_scenarios_defaults():
    cfg = make_config(scenario="split-digits", online=True, memory="reservoir")
    assert (cfg.epochs, cfg.batch_size, cfg.mem_batch) == (1, 10, 10)  # split-digits' own epochs are 10
    assert make_config(scenario="split-digits", online=True, memory="reservoir", batch_size=4).batch_size == 4
    with pytest.raises(CclError, match=r"^run: --online streams each sample once: --epochs must be 1 "
                                       r"\(the default online\), got 3$"):
        make_config(scenario="split-digits", online=True, epochs=3)
    with pytest.raises(CclError, match="--reveal-boundaries applies to an online stream"):
        make_config(reveal_boundaries=True)


@pytest.mark.parametrize("strategy", ["er", "er-ace", "der++"])
@pytest.mark.parametrize("memory", ["reservoir", "class-balanced-reservoir", "online-datadam"])
def test_an_online_run_trains_on_every_sample_once(tmp_path, streamed, strategy, memory):
    p = prepare(make_config(**TINY, strategy=strategy, memory=memory))
    run_dir = run(p, tmp_path, progress=False)
    results = json.loads((run_dir / "results.json").read_text())
    assert len(streamed) == sum(STEPS) and {len(b) for b in streamed} == {10}
    assert sorted(y for b in streamed for y in b) == sorted(p.data.train_y.tolist())  # each sample once
    assert len(results["accuracy_matrix"]) == 3 and results["memory_size"]["images"] == 20
    memory_classes = sorted(int(c) for c in results["memory_updates"][-1]["per_class"])
    assert memory_classes == list(range(10))


def _steps_seen_by_ace(monkeypatch, tmp_path, **values) -> list[tuple[tuple, list, bool]]:
    """(the memory's classes, the stream labels, whether it replayed) at every step of an
    ER-ACE run, as its loss saw them."""
    seen, loss = [], ACEPlugin.training_loss

    def recording(self, output, y, batch, template):
        stream = batch.stream if batch is not None else len(y)
        seen.append((self.memory().classes, y[:stream].tolist(), batch is not None))
        return loss(self, output, y, batch, template)
    monkeypatch.setattr(ACEPlugin, "training_loss", recording)
    run(prepare(make_config(**TINY, strategy="er-ace", memory="reservoir", **values)), tmp_path, progress=False)
    return seen


def test_er_ace_online_masks_the_classes_the_stream_brought_so_far_and_replays_from_the_second_step(
        monkeypatch, tmp_path):
    """mammoth's ER-ACE with task_free on: the classes come from the batches, not the
    experiences, and replay starts as soon as the buffer holds a sample."""
    steps = _steps_seen_by_ace(monkeypatch, tmp_path)
    assert len(steps) == sum(STEPS)
    arrived: list[int] = []
    for i, (classes, labels, replayed) in enumerate(steps):
        assert classes == tuple(arrived), i
        assert replayed == (i > 0), i
        arrived += sorted(set(labels) - set(arrived))


def test_revealed_boundaries_give_the_memory_its_classes_at_each_experiences_end(monkeypatch, tmp_path):
    steps = _steps_seen_by_ace(monkeypatch, tmp_path, reveal_boundaries=True)
    first = STEPS[0]
    assert all(classes == () and not replayed for classes, _, replayed in steps[:first])  # mammoth's task_free off
    ended = {y for _, labels, _ in steps[:first] for y in labels}
    assert all(set(classes) == ended and replayed for classes, _, replayed in steps[first:first + STEPS[1]])


class StopAfter(CheckpointClock):
    """A checkpoint every `every` minibatches; SIGINT after the `stop`-th."""

    def __init__(self, every: int, stop: int):
        super().__init__(iterations=every)
        self.stop, self.count = stop, 0

    def saved(self, position):
        super().saved(position)
        self.count += 1
        if self.count == self.stop:
            os.kill(os.getpid(), signal.SIGINT)


# Saves at experience 0's 5th minibatch, then (the clock restarted by its end's checkpoint)
# experience 1's 5th: the 2nd save stops the run inside experience 1, at iteration 4.
@pytest.mark.parametrize("strategy, memory", [("er-ace", "reservoir"), ("der++", "class-balanced-reservoir"),
                                              ("der++", "online-datadam")])  # stopped 3 steps past an update
def test_a_run_stopped_inside_the_stream_resumes_to_the_uninterrupted_matrix(tmp_path, strategy, memory):
    values = dict(**TINY, strategy=strategy, memory=memory)
    whole = json.loads((run(prepare(make_config(**values)), tmp_path / "whole", progress=False)
                        / "results.json").read_text())
    with pytest.raises(KeyboardInterrupt):
        run(prepare(make_config(**values)), tmp_path / "cut", progress=False,
            checkpoint_clock=StopAfter(every=5, stop=2))
    (run_dir,) = (tmp_path / "cut").iterdir()
    position = torch.load(run_dir / "checkpoint.pt", weights_only=True)["position"]
    assert (position["epoch"], position["iteration"]) == (0, 4)
    result = CliRunner().invoke(main, ["run", "--resume", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and "at experience 1, epoch 0, iteration 4" in result.output
    resumed = json.loads((run_dir / "results.json").read_text())
    for key in ("accuracy_matrix", "forgetting", "bwt", "final_average_accuracy"):
        assert resumed[key] == whole[key], key
    # experience 1's seconds count those before the stop, as its restored update seconds do
    # (counting only those after it left train_seconds below 0 under load)
    assert resumed["train_seconds"][1] + resumed["memory_update_seconds"][1] >= position["seconds"] > 0


@pytest.mark.parametrize("values, message", [
    (dict(memory="herding"), "--online hides where experiences end, and memory 'herding' fills at an experience's "
                             "end: use reservoir, class-balanced-reservoir, online-datadam (or add --reveal-boundaries)"),
    (dict(memory="datadam"), "memory 'datadam' fills at an experience's end"),
    (dict(memory="avalanche-reservoir"), "memory 'avalanche-reservoir' fills at an experience's end"),
    (dict(memory="reservoir", strategy="icarl"), "--strategy icarl acts at an experience's end: use er, "),
    (dict(memory="reservoir", finetune_epochs=1), "--finetune-epochs trains at an experience's end"),
    (dict(memory="joint"), "memory 'joint' trains on all the data at once"),
])
def test_what_needs_experience_boundaries_is_refused_online_in_one_line(values, message):
    with pytest.raises(CclError, match=re.escape(message)) as refused:
        prepare(make_config(**TINY, **values))
    assert "\n" not in str(refused.value)


def test_revealed_boundaries_let_a_memory_filled_at_each_end_run_online(tmp_path):
    p = prepare(make_config(**TINY, memory="herding", reveal_boundaries=True))
    results = json.loads((run(p, tmp_path, progress=False) / "results.json").read_text())
    assert len(results["accuracy_matrix"]) == 3


def test_the_cli_refuses_an_end_of_experience_memory_online_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["run", "--online", "--memory", "herding", "--scenario", "split-digits",
                                       "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith("error: --online hides where experiences end, and memory 'herding'")
    assert not (tmp_path / "runs").exists()


def test_the_estimate_counts_one_pass_in_minibatches_of_ten(tmp_path):
    p = prepare(make_config(**TINY, memory="reservoir", strategy="der++"))
    bench, _, parts = _build(p, tmp_path, progress=False)
    plan = plan_run(p, bench, parts.memory)
    assert plan.steps == tuple(STEPS) and plan.stream_batch == 10
    assert plan.replayed == (20, 20, 20) and plan.update_work == (0.0, 0.0, 0.0)  # DER++: two draws of 10


def test_compare_online_runs_every_memory_that_needs_no_boundary(tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["compare", "--online", "--scenario", "split-digits", "--experiences", "2",
                                       "--train-per-class", "10", "--mem-size", "20", "--width", "8", "--seeds", "1",
                                       "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    cells = sorted(p.name for p in (out / "cells").iterdir())
    assert cells == ["class-balanced-reservoir-s0", "none-s0", "online-datadam-s0", "reservoir-s0"]
    (config,) = (out / "cells" / "reservoir-s0").glob("*/config.json")
    assert json.loads(config.read_text())["run"]["online"] is True


def _benchmark():
    from avalanche.benchmarks import nc_benchmark
    g = torch.Generator().manual_seed(0)
    y = torch.arange(6).repeat_interleave(30)  # 30 images a class
    x = torch.randn(len(y), 1, 8, 8, generator=g) + y[:, None, None, None] * 0.5  # (N, 1, 8, 8)
    return nc_benchmark(TensorDataset(x, y), TensorDataset(x, y), n_experiences=3, task_labels=False, seed=0)


def _naive(plugin, epochs: int = 1):
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 6))
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=10,
                 train_epochs=epochs, plugins=[plugin], evaluator=EvaluationPlugin(loggers=[]), device="cpu")


@pytest.mark.filterwarnings("ignore:No loggers specified", "ignore:DataDAM. Sequential has 0 stage")
def test_the_python_plugin_online_learns_its_classes_from_the_stream():
    torch.manual_seed(0)
    replay = CondensedReplay(mem_size=12, method="class-balanced-reservoir", strategy="er-ace", online=True)
    strategy = _naive(replay)
    first = _benchmark().train_stream[0]
    strategy.train(first)
    assert isinstance(replay.memory, OnlineReservoirMemoryPlugin) and len(replay.memory.labels) == 12
    assert sorted(replay.memory.classes) == sorted(first.classes_in_this_experience)
    condensing = CondensedReplay(mem_size=12, method="online-datadam", settings={"every": 2}, online=True)
    _naive(condensing).train(first)
    assert isinstance(condensing.memory, OnlineCondensingMemoryPlugin)
    assert condensing.memory.update_log[-1]["summary_updates"] == 3  # 60 samples: 6 steps of 10
    with pytest.raises(ValueError, match="online=True streams each sample once: build the strategy with "
                                         "train_epochs=1, not 2"):
        _naive(CondensedReplay(mem_size=12, method="reservoir", online=True), epochs=2).train(first)
    with pytest.raises(ValueError, match="method 'herding' fills at an experience's end"):
        CondensedReplay(mem_size=12, method="herding", online=True)
    with pytest.raises(ValueError, match="strategy 'icarl' acts at an experience's end"):
        CondensedReplay(mem_size=12, method="reservoir", strategy="icarl", online=True)


def test_the_online_preset_is_the_issues_protocol():
    from ccl.cli_options import config_values
    values, _ = config_values({"strategy": "er-ace"}, Path("cpu-online"), (), False, None)
    cfg = make_config(**values)
    assert (cfg.scenario, cfg.online, cfg.epochs, cfg.batch_size, cfg.mem_batch) == ("split-cifar10", True, 1, 10, 10)
    assert (cfg.train_per_class, cfg.width, cfg.mem_size, cfg.memory, cfg.lr) == (1000, 64, 100, "reservoir", 0.1)
    assert math.isclose(cfg.momentum, 0.0) and not cfg.reveal_boundaries


def test_the_condensing_memory_keeps_balanced_summaries_that_moved_and_reports_their_cost(tmp_path):
    settings = {"share": 0.5, "every": 4, "iterations": 3}
    p = prepare(make_config(**TINY, memory="online-datadam", memory_settings=settings))
    run_dir = run(p, tmp_path, progress=False)
    results = json.loads((run_dir / "results.json").read_text())
    memory = torch.load(run_dir / "memory.pt", weights_only=True)
    summaries = memory["labels"][:10]  # 10 of the 20 slots, one a class once all 10 have arrived
    assert sorted(summaries.tolist()) == list(range(10)) and len(memory["labels"]) == 20
    real = torch.as_tensor(p.data.normalise(p.data.train_x))  # (N, C, H, W)
    distances = torch.cdist(memory["images"].flatten(1), real.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    nearest = distances.min(1).values  # (20,) to the nearest training image
    assert bool((nearest[:10] > 1e-3).all())  # every summary moved away from the stream sample it started as
    assert bool((nearest[10:] == 0).all())  # the reservoir's rows are stream samples as they came
    logged = results["memory_updates"]
    assert [entry["summary_updates"] for entry in logged] == [2, 1, 2]  # every 4th of the steps 1-8, 9-14, 15-20
    assert all(entry["seconds"] > 0 and entry["seconds_per_step"] > 0 for entry in logged)
    assert results["memory_update_seconds"] == [entry["seconds"] for entry in logged]


def test_every_summary_slot_starts_as_its_own_stream_sample(tmp_path):
    """A class's slots beyond its samples in the minibatch that brings it hold noisy copies
    only until its next samples take them: with no update, every summary is a distinct
    training image (30 summaries, 3 a class at the end, 7-8 a class at the first step)."""
    p = prepare(make_config(**{**TINY, "mem_size": 60}, memory="online-datadam", memory_settings={"every": 1000}))
    memory = torch.load(run(p, tmp_path, progress=False) / "memory.pt", weights_only=True)
    summaries = memory["images"][:30].flatten(1)
    assert sorted(memory["labels"][:30].tolist()) == sorted(list(range(10)) * 3)
    real = torch.as_tensor(p.data.normalise(p.data.train_x)).flatten(1)
    assert bool((torch.cdist(summaries, real, compute_mode="donot_use_mm_for_euclid_dist").min(1).values == 0).all())
    assert len(torch.unique(summaries, dim=0)) == 30


def test_one_update_lowers_the_summaries_loss_against_the_window():
    from ccl.condense.datadam import matching_statistics, stage_network
    from ccl.memory.online_condensing import summary_loss
    from ccl.models import build_learner
    torch.manual_seed(0)
    learner = build_learner("convnet", 3, (1, 8, 8), 16, 2, "instance")
    network = stage_network(learner, (1, 8, 8), torch.device("cpu"))
    window, groups = torch.randn(30, 1, 8, 8), torch.arange(3).repeat_interleave(10)
    syn, syn_groups = torch.randn(6, 1, 8, 8, requires_grad=True), torch.arange(3).repeat_interleave(2)
    with torch.no_grad():
        real = matching_statistics(network, window, groups, 3, 4.0)
    losses = []
    for _ in range(5):
        loss = summary_loss(real, matching_statistics(network, syn, syn_groups, 3, 4.0), 1.0, 0.01)
        (grad,) = torch.autograd.grad(loss, syn)
        with torch.no_grad():
            syn -= 1.0 * grad
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_the_condensing_memory_needs_a_summary_a_class():
    with pytest.raises(CclError, match=r"memory 'online-datadam' keeps 2 of its 20 slots as summaries, fewer than the "
                                       r"10 classes: raise --mem-size or --set share=\.\.\.$"):
        prepare(make_config(**TINY, memory="online-datadam", memory_settings={"share": 0.1}))
    with pytest.raises(CclError, match="share must be in"):
        prepare(make_config(**TINY, memory="online-datadam", memory_settings={"share": 1.5}))
