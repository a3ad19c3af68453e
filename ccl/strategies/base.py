"""What every replay strategy shares: the registry entry, and the loss plugin over the
on-device memory's minibatch split.

A strategy is an Avalanche plugin over an on-device memory (`ReplayMemoryPlugin`,
class-balanced or reservoir), which appends memory samples to each minibatch once it is on
the device: the minibatch is the stream's B samples followed by `draws` memory batches of
`mem_batch` each, and the memory records which images it drew (`last_draw`). A loss
strategy swaps the Avalanche strategy's criterion for a loss over that split while
training, through Avalanche's public `before_backward` hook (evaluation keeps the plain
criterion).

What a strategy needs of the memory (`draws`, the learner's logits per row) its registry
entry declares (`memory_needs`), and the memory is built with it: the strategy reads the
memory and never sets its attributes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin

from ccl.memory import MemoryNeeds, ReplayMemoryPlugin
from ccl.registry import Registry
from ccl.training import soft_cross_entropy


@dataclass(frozen=True)
class NoSettings:
    """A strategy without hyperparameters of its own."""


@dataclass(frozen=True)
class SoftTargetSettings:
    """What a strategy does with the soft targets a condensed memory carries (PAD's
    learned labels): a replayed row that has one is trained toward softmax(target /
    temperature) instead of its hard label."""
    temperature: float = 1.0  # 1: the soft labels as learned (the PAD reference trains on them so)

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def plain_replay(settings: Any) -> MemoryNeeds:
    """One memory batch per minibatch, no per-row field beside images and labels."""
    return MemoryNeeds()


@dataclass(frozen=True)
class Strategy:
    """A registry entry: how a strategy is built and what it needs.

    plugin: (memory, settings) -> the plugin that shapes the loss (None: no plugin for
        this memory), or None (no plugin at all).
    settings: its hyperparameters' dataclass (`--strategy-set k=v` overrides a field).
    stream_slots: the default of --stream-slots for the class-balanced memory (ER-ACE's
        masked stream loss never sets new classes against old ones, so it needs them in
        memory while they stream: docs/results.md).
    needs_replay: it reads the on-device memory's samples while training on the stream.
    memory_alone: it trains a fresh learner on the memory alone at each step (GDumb) and
        replays nothing beside the stream.
    memory_needs: settings -> what it needs of an on-device memory (`MemoryNeeds`: memory
        batches per minibatch, the learner's logits per row), passed to the memory when it
        is built.
    own_training: settings -> (epochs, minibatch size) when its learner trains with its own
        instead of the run's (GDumb's fresh learner); None: the run's. The run's checkpoint
        checks and time estimate read them.
    """
    plugin: Callable[[ReplayMemoryPlugin, Any], SupervisedPlugin] | None = None
    settings: type = NoSettings
    stream_slots: bool = False
    needs_replay: bool = True
    memory_alone: bool = False
    memory_needs: Callable[[Any], MemoryNeeds] = plain_replay
    own_training: Callable[[Any], tuple[int, int]] | None = None


STRATEGIES: Registry[Strategy] = Registry("strategy")


class ReplayLoss(SupervisedPlugin):
    """Base: `loss(output, y, stream)` replaces the criterion, where `stream` is the
    number of stream samples at the front of the minibatch (the rest came from memory).

    The strategy's criterion (plain cross-entropy) has computed `strategy.loss` by
    `before_backward`; this loss replaces it there, as Avalanche's regularisation plugins
    add theirs.
    """

    def __init__(self, memory: ReplayMemoryPlugin, settings: Any = None):
        super().__init__()
        self.memory, self.settings = memory, settings

    def before_backward(self, strategy, **kwargs):
        strategy.loss = self(strategy.mb_output, strategy.mb_y)

    def __call__(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        drawn = self.memory.last_draw
        stream = len(y) - (0 if drawn is None else len(drawn))
        if drawn is None:  # nothing in memory yet (first experience): plain cross-entropy
            return F.cross_entropy(output, y)
        return self.loss(output, y, stream)

    def loss(self, output: torch.Tensor, y: torch.Tensor, stream: int) -> torch.Tensor:
        raise NotImplementedError

    def memory_cross_entropy(self, output: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of replayed memory rows `rows`: to their soft targets where
        the memory holds them (`SoftTargetSettings.temperature`), else to their labels."""
        soft = self.memory.soft_targets(rows)
        if soft is None:
            return F.cross_entropy(output, y)
        return soft_cross_entropy(output, y, soft, self.settings.temperature).mean()


class ERPlugin(ReplayLoss):
    """ER's loss is the strategy's own criterion (one cross-entropy over stream and memory
    samples), left untouched, except where replayed rows carry soft targets: then those
    rows take cross-entropy to softmax(target / temperature) and the rest their labels,
    averaged over the whole minibatch as the criterion is."""

    def before_backward(self, strategy, **kwargs):
        drawn = self.memory.last_draw
        soft = None if drawn is None else self.memory.soft_targets(drawn)
        if soft is None:
            return
        stream = len(strategy.mb_y) - len(drawn)
        soft = torch.cat([soft.new_full((stream, soft.shape[1]), float("nan")), soft])  # stream rows: none
        strategy.loss = soft_cross_entropy(strategy.mb_output, strategy.mb_y, soft, self.settings.temperature).mean()


def er_plugin(memory, settings: SoftTargetSettings) -> ERPlugin | None:
    """ER needs a plugin only over an on-device memory, whose rows may carry soft targets."""
    return ERPlugin(memory, settings) if isinstance(memory, ReplayMemoryPlugin) else None
