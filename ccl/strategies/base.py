"""What every replay strategy shares: the registry entry, and the loss plugin over the
on-device memory's minibatch split.

A strategy is an Avalanche plugin over an on-device memory (`ReplayMemoryPlugin`,
class-balanced or reservoir), which appends memory samples to each minibatch once it is on
the device and hands the strategy the step's `ReplayBatch` (`strategy.replay_batch`): the
stream's B samples come first, then `draws` memory batches, with the drawn rows' logits
and soft targets. A loss strategy's loss is a function of (output, targets, batch), the
Avalanche strategy's criterion for training steps (`ReplayLoss.before_training`);
evaluation keeps the template's own criterion, and every other plugin's additions to
`strategy.loss` stay.

What a strategy needs of the memory (`draws`, the learner's logits per row) its registry
entry declares (`memory_needs`), and the memory is built with it. A strategy never reads
or writes the memory's attributes: beside the batch it sees the whole memory only through
a read-only `MemoryView` (`ReplayLoss.memory()`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin

from ccl.memory import MemoryNeeds, MemoryView, ReplayBatch, ReplayMemoryPlugin
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
    online: it reads no experience boundary (no step at an experience's end, no class list
        but the memory's), so it runs on an online stream that hides them (`ccl run --online`).
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
    online: bool = False
    own_training: Callable[[Any], tuple[int, int]] | None = None


STRATEGIES: Registry[Strategy] = Registry("strategy")


class ReplayLoss(SupervisedPlugin):
    """Base: `loss(output, y, batch)` is the criterion of every training step that
    replayed, where `batch` (a `ReplayBatch`) says how many stream samples are at the
    front of the minibatch and carries the replayed rows' logits and soft targets; a step
    that replayed nothing takes plain cross-entropy.

    Avalanche's training step is `loss = 0; loss += strategy.criterion(); before_backward
    (plugins add their terms); backward`, and `criterion()` is the template's criterion on
    (`mb_output`, `mb_y`). While `train()` runs, this plugin stands in for that one method
    of the strategy, so the replay loss is the step's base and LwF's, EWC's, SI's ...
    terms add to it in whatever order the plugins come; a plugin that set `strategy.loss`
    in `before_backward` instead would drop every term added before it. Why `criterion()`
    and not the template's `_criterion` function: other plugins call `_criterion` on
    batches of their own (EWC's importances, A-GEM's and GEM's reference gradients,
    RWalk, MIR), where no stream/memory split exists; `criterion()` is the one call the
    training loop makes on the minibatch the memory extended.
    """

    def __init__(self, memory: ReplayMemoryPlugin, settings: Any = None):
        super().__init__()
        self.memory: Callable[[], MemoryView] = memory.view  # the whole memory, read-only
        self.settings = settings

    def before_training(self, strategy, **kwargs):
        if not isinstance(vars(strategy).get("criterion"), TrainingCriterion):  # not in place from a failed train()
            strategy.criterion = TrainingCriterion(self, strategy)

    def after_training(self, strategy, **kwargs):
        installed = vars(strategy).get("criterion")
        if isinstance(installed, TrainingCriterion) and installed.loss is self:
            installed.remove()

    def training_loss(self, output: torch.Tensor, y: torch.Tensor, batch: ReplayBatch | None,
                      template: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The loss of a training step over (output, y), the minibatch with its memory rows
        (`batch`: what was replayed, None: nothing); `template()` is the template's own
        criterion on it (ER keeps it)."""
        return self(output, y, batch)

    def __call__(self, output: torch.Tensor, y: torch.Tensor, batch: ReplayBatch | None) -> torch.Tensor:
        if batch is None:  # nothing in memory yet (first experience): plain cross-entropy
            return F.cross_entropy(output, y)
        return self.loss(output, y, batch)

    def loss(self, output: torch.Tensor, y: torch.Tensor, batch: ReplayBatch) -> torch.Tensor:
        raise NotImplementedError

    def memory_cross_entropy(self, output: torch.Tensor, y: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:
        """Mean cross-entropy of replayed memory rows: to their soft targets `soft` where
        they have one (`SoftTargetSettings.temperature`; None: no row has), else to their labels."""
        if soft is None:
            return F.cross_entropy(output, y)
        return soft_cross_entropy(output, y, soft, self.settings.temperature).mean()


class ERPlugin(ReplayLoss):
    """ER's loss is the strategy's own criterion (one cross-entropy over stream and memory
    samples), left untouched, except where replayed rows carry soft targets: then those
    rows take cross-entropy to softmax(target / temperature) and the rest their labels,
    averaged over the whole minibatch as the criterion is."""

    def training_loss(self, output, y, batch, template):
        soft = self.soft_loss(output, y, batch)
        return template() if soft is None else soft

    def __call__(self, output: torch.Tensor, y: torch.Tensor, batch: ReplayBatch | None) -> torch.Tensor:
        soft = self.soft_loss(output, y, batch)
        return F.cross_entropy(output, y) if soft is None else soft

    def soft_loss(self, output: torch.Tensor, y: torch.Tensor, batch: ReplayBatch | None) -> torch.Tensor | None:
        """The minibatch's mean cross-entropy with the replayed rows' soft targets, or None
        where no replayed row has one."""
        if batch is None or batch.soft is None:
            return None
        soft = batch.soft
        soft = torch.cat([soft.new_full((batch.stream, soft.shape[1]), float("nan")), soft])  # stream rows: none
        return soft_cross_entropy(output, y, soft, self.settings.temperature).mean()


class TrainingCriterion:
    """`strategy.criterion()` while a `ReplayLoss` is installed: the replay loss on the
    training step's (`mb_output`, `mb_y`); outside training (`eval()`, also when called
    inside `train()`) the template's own criterion. `remove()` gives the strategy its
    method back."""

    def __init__(self, loss: ReplayLoss, strategy):
        self.loss, self.strategy = loss, strategy
        self.template = strategy.criterion  # the template's (usually its class's method)
        self.shadowed = vars(strategy).get("criterion")  # one set on the instance before, put back by remove()

    def __call__(self) -> torch.Tensor:
        strategy = self.strategy
        if not strategy.is_training:
            return self.template()
        # the memory plugin's hand-over of this step (before_forward); none from a plugin that never replays
        batch = getattr(strategy, "replay_batch", None)
        return self.loss.training_loss(strategy.mb_output, strategy.mb_y, batch, self.template)

    def remove(self) -> None:
        if self.shadowed is None:
            del self.strategy.criterion  # the instance attribute: the class's method shows again
        else:
            self.strategy.criterion = self.shadowed


def er_plugin(memory, settings: SoftTargetSettings) -> ERPlugin | None:
    """ER needs a plugin only over an on-device memory, whose rows may carry soft targets."""
    return ERPlugin(memory, settings) if isinstance(memory, ReplayMemoryPlugin) else None
