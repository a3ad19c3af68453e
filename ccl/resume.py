"""Checkpoints inside an experience: every `checkpoint_every` seconds a run saves where it
is within the experience (an epoch and minibatch, or an iteration of the memory's
condensation), so that `ccl run --resume` continues from there to the numbers an
uninterrupted run gives, instead of from the experience's start.

`CheckpointsWithin` is the Avalanche plugin that says when a save is due, what a save
holds beside the run's boundary state, and how a resumed run gets back there:

- Training: saved at the start of a minibatch, before any plugin has seen it. A resumed
  run starts the experience from the learner's weights at its start (so what plugins
  copy then, a teacher or a trajectory's first snapshot, is what they copied), skips
  the epochs done, and fetches and drops the minibatches done in the current epoch,
  each fetch that drew from the generators (a sampler seeding its shuffle) with the
  state it drew from: the data loader yields the same minibatches in the same order.
  Then the learner, optimiser, memory, clock, running metrics and generators are put
  back as they were, and training goes on.
- Condensation: the memory's filler hands the method a `ccl.condense.LoopCheckpoint`
  (`CondensationCheckpoint`) through which the method's loop saves its progress. The
  state at the experience's end (before the memory's update) is kept when the update
  starts and saved with it; a resumed run trains no epoch, puts that state back and
  runs the update again, whose set-up draws what it drew, and the loop takes up its
  progress where it was saved.

A SIGINT or SIGTERM makes the next of these places save, whatever the clock says
(`ccl.guards.stop_requested`), and the run stops right after that checkpoint: the
learner's weights at the experience's start and the state at the memory's update are
therefore kept in every run, not only in runs with periodic checkpoints.
"""
from __future__ import annotations

import random
import time
from typing import Callable

import numpy as np
import torch
from avalanche.core import SupervisedPlugin

from ccl.checkpoint import (CLOCK_COUNTERS, metric_states, numpy_rng_state, restore_metric_states,
                            restore_running_metric_states, rng_state, running_metric_states, set_rng_state)
from ccl.condense import LoopCheckpoint
from ccl.errors import CclError
from ccl.guards import stop_if_requested, stop_requested


class CheckpointClock:
    """When a checkpoint inside an experience is due: `seconds` of wall time after the last
    checkpoint (0: never), or every `iterations` training or condensation iterations
    (for tests: a deterministic place to stop); and, whatever these say, as soon as a
    signal asked the run to stop. Asked once per iteration."""

    def __init__(self, seconds: float = 0.0, iterations: int = 0):
        self.seconds, self.iterations = seconds, iterations
        self.restart()

    def restart(self) -> None:
        """A checkpoint was written (inside an experience or at its end): count from now."""
        self.last, self.ticks = time.monotonic(), 0

    def due(self) -> bool:
        self.ticks += 1
        if stop_requested():
            return True
        if self.iterations:
            return self.ticks >= self.iterations
        return self.seconds > 0 and time.monotonic() - self.last >= self.seconds

    def saved(self, position: dict) -> None:
        """Told once a checkpoint inside an experience is on disk."""
        self.restart()


def cpu_rng_state() -> tuple:
    """The CPU generators a data loader draws from (torch's, numpy's, Python's), as they are."""
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _same_cpu_rng(a: tuple, b: tuple) -> bool:
    return (torch.equal(a[0], b[0]) and a[1][2:] == b[1][2:] and np.array_equal(a[1][1], b[1][1])
            and a[2] == b[2])


class RecordedOrder:
    """The strategy's training data loader, recording the CPU generators' state before each
    minibatch fetch that draws from them (`drawn`: {fetch index: `rng_state()`-style
    dict}), so that a resumed run can make the same fetches draw the same numbers.
    Resuming, the first `skip` minibatches are fetched with those states put back and
    dropped: they were trained on before the interruption."""

    def __init__(self, loader, drawn: dict[int, dict], skip: int = 0):
        self.loader, self.drawn, self.skip = loader, drawn, skip

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = None
        k = 0
        while True:
            if k <= self.skip and k in self.drawn:
                set_rng_state(self.drawn[k])
            before = cpu_rng_state()
            if batches is None:  # torch's DataLoader draws its base seed here, Avalanche's at the first fetch
                batches = iter(self.loader)
            try:
                batch = next(batches)
            except StopIteration:
                return
            if not _same_cpu_rng(before, cpu_rng_state()):
                self.drawn[k] = {"torch": before[0], "numpy": numpy_rng_state(before[1]), "random": before[2]}
            if k >= self.skip:
                yield batch
            k += 1


class CondensationCheckpoint(LoopCheckpoint):
    """The `LoopCheckpoint` a condensing filler hands its method: saves only while the
    memory updates at an experience's end under `CheckpointsWithin`, and resumes once."""

    def __init__(self, clock: CheckpointClock):
        self.clock = clock
        self.active = False  # inside an update that `CheckpointsWithin` can resume
        self.pending: dict | None = None  # progress to resume from, with its generators' state
        self.on_save: Callable[[dict], None] | None = None

    def resume(self) -> dict | None:
        progress, self.pending = self.pending, None
        if progress is not None:
            set_rng_state(progress["rng"])  # as they were when the progress was saved
        return progress

    def due(self) -> bool:
        return self.active and self.clock.due()

    def save(self, progress: dict) -> None:
        if self.on_save is not None:
            self.on_save({**progress, "rng": rng_state()})


def _copy(value):
    """Tensors cloned, containers copied: a state kept while the memory goes on changing."""
    if torch.is_tensor(value):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


class CheckpointsWithin(SupervisedPlugin):
    """Saves and resumes a run inside an experience (see the module docstring). The first
    plugin of the strategy: its hooks run before any other's.

    Args:
        clock: when a save is due.
        save: writes a state (model, optimizer, memory, strategy, metric_states, rng,
            experience_start_model and position) into the run's checkpoint.
        memory: the run's memory plugin (its `checkpoint()` and `restore()`), or None.
        strategy_plugin: the strategy's plugin, or None; one with `checkpoint()` and
            `restore()` carries a state from one experience to the next (BiC's bias layer).
        condensation: the `LoopCheckpoint` the memory's filler was built with, or None.
    """

    def __init__(self, clock: CheckpointClock, save: Callable[[dict], None], memory=None, strategy_plugin=None,
                 condensation: CondensationCheckpoint | None = None):
        super().__init__()
        self.clock, self._save, self.condensation = clock, save, condensation
        self.memory, self.strategy_plugin = memory, strategy_plugin
        if condensation is not None:
            condensation.on_save = self._save_condensation
        self.start_model: dict | None = None  # the learner's weights at the experience's start
        self.fetches: dict[int, dict] = {}  # this epoch's `RecordedOrder.drawn`
        self.at_update: dict | None = None  # the state when the memory's update began
        self.resuming: dict | None = None  # the checkpoint to continue from, until it is reached
        self.epochs: int | None = None  # the strategy's epochs, while a resume skips some
        # This experience's training seconds before the run stopped inside it (from the
        # checkpoint resumed) and the clock since: the run's train_seconds count both, as
        # the memory's restored update seconds do.
        self.seconds_before = 0.0
        self._started = time.perf_counter()

    def resume_from(self, ckpt: dict) -> None:
        """Continue the next experience trained from `ckpt`, a checkpoint inside it."""
        self.resuming = ckpt
        self.seconds_before = float(ckpt["position"].get("seconds", 0.0))  # none in an older ccl's

    def take_seconds_before(self) -> float:
        """The seconds this experience trained before a resume (0 without one), once."""
        seconds, self.seconds_before = self.seconds_before, 0.0
        return seconds

    # --- training ---------------------------------------------------------------------

    def before_training_exp(self, strategy, **kwargs):
        if self.resuming is not None:  # Avalanche's loop runs the epochs left
            self.epochs = strategy.train_epochs
            phase = self.resuming["position"]["phase"]
            strategy.train_epochs -= self.resuming["position"]["epoch"] if phase == "training" else self.epochs
        self.start_model = _copy(strategy.model.state_dict())  # a signal may ask for a save at any minibatch
        self._started = time.perf_counter()

    def before_training_epoch(self, strategy, **kwargs):
        skip = 0
        self.fetches = {}
        if self.resuming is not None and self.resuming["position"]["phase"] == "training":
            self.fetches = dict(self.resuming["position"]["fetch_rng"])
            skip = self.resuming["position"]["iteration"]
            if skip >= len(strategy.dataloader):
                raise CclError(f"the checkpoint stopped at minibatch {skip} of an epoch of {len(strategy.dataloader)}:"
                               " not one of this run; delete it to restart the run from the beginning")
        strategy.dataloader = RecordedOrder(strategy.dataloader, self.fetches, skip)

    def after_training_epoch(self, strategy, **kwargs):
        if isinstance(strategy.dataloader, RecordedOrder):
            strategy.dataloader = strategy.dataloader.loader

    def before_training_iteration(self, strategy, **kwargs):
        if self.resuming is not None:
            self._restore(strategy, self.resuming)
        elif self.clock.due():
            position = {"phase": "training", "epoch": strategy.clock.train_exp_epochs,
                        "iteration": strategy.clock.train_epoch_iterations, "fetch_rng": self.fetches}
            self._write(self._state(strategy, position))

    # --- condensation -----------------------------------------------------------------

    def after_training_exp(self, strategy, **kwargs):
        if self.epochs is not None:
            strategy.train_epochs, self.epochs = self.epochs, None
        if self.resuming is not None and self.resuming["position"]["phase"] == "condensing":
            progress = self.resuming["position"]["condensation"]
            self._restore(strategy, self.resuming)
            self.condensation.pending = progress
        if self.condensation is not None:
            self.at_update = _copy(self._state(strategy, {"phase": "condensing", "epoch": strategy.train_epochs,
                                                          "iteration": 0}))
            self.condensation.active = True

    def after_training(self, strategy, **kwargs):
        if self.condensation is not None:
            self.condensation.active, self.condensation.pending = False, None
        self.at_update = None

    def _save_condensation(self, progress: dict) -> None:
        state = dict(self.at_update)
        state["position"] = {**state["position"], "condensation": progress}
        self._write(state)

    # --- state --------------------------------------------------------------------------

    def strategy_state(self) -> dict | None:
        """What the strategy's plugin carries from one experience to the next, or None."""
        return self.strategy_plugin.checkpoint() if hasattr(self.strategy_plugin, "checkpoint") else None

    def _state(self, strategy, position: dict) -> dict:
        evaluator = strategy.evaluator
        return {"model": strategy.model.state_dict(), "optimizer": strategy.optimizer.state_dict(),
                "memory": self.memory.checkpoint() if self.memory is not None else None,
                "strategy": self.strategy_state(),
                "metric_states": metric_states(evaluator.metrics), "rng": rng_state(),
                "experience_start_model": self.start_model,
                "position": {**position, "seconds": self.seconds_before + time.perf_counter() - self._started,
                             "clock": {name: getattr(strategy.clock, name) for name in CLOCK_COUNTERS},
                             "running_metrics": running_metric_states(evaluator.metrics)}}

    def _write(self, state: dict) -> None:
        state["position"]["saved"] = time.time()
        self._save(state)
        self.clock.saved(state["position"])
        stop_if_requested()  # a signal asked for this checkpoint: the run stops here

    def _restore(self, strategy, ckpt: dict) -> None:
        """Everything as it was when `ckpt` was saved; the generators last."""
        self.resuming = None
        strategy.model.load_state_dict(ckpt["model"])
        strategy.optimizer.load_state_dict(ckpt["optimizer"])
        if self.memory is not None:
            self.memory.restore(ckpt["memory"])
        restore_metric_states(strategy.evaluator.metrics, ckpt["metric_states"])
        restore_running_metric_states(strategy.evaluator.metrics, ckpt["position"]["running_metrics"],
                                      strategy.device)
        for name, value in ckpt["position"]["clock"].items():
            setattr(strategy.clock, name, value)
        set_rng_state(ckpt["rng"])
        self.clock.restart()
