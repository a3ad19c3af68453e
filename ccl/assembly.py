"""What replays, built once: the memory plugin, the strategy's loss and the plugins around
them, for `ccl run` (`ccl.runner`) and `ccl.CondensedReplay` alike.

`build_replay` takes keywords only and returns a `ReplayParts`, whose `plugins()` lists
the parts in `PLUGIN_ORDER`, the one place that order is written down; a caller that
hands Avalanche its own list checks it with `check_plugin_order`. Avalanche calls a hook
on the plugins in list order, so the order is a contract between the parts (why each
part stands where it does is said beside its name below).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable

import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from ccl.condense import LoopCheckpoint
from ccl.memory import AugmentPlugin, DeviceMemoryPlugin, FillerSettings, MemoryNeeds, MemorySpec
from ccl.memory.codec import MemoryCodec
from ccl.models.stages import last_linear
from ccl.strategies import Strategy

# The roles of a training run's plugins, in the order Avalanche must call them.
PLUGIN_ORDER = (
    "checkpoints",     # ccl.resume.CheckpointsWithin: saves at a minibatch's start, before any other plugin has seen it
    "progress",        # ccl.logs.Progress: the bar and the run's estimate
    "guard",           # ccl.guards.DivergenceGuard: a diverged experience stops before its memory update
    "stream_augment",  # before the memory: it augments the stream samples only, not the memory's
    "memory",          # appends the memory's rows to each minibatch; fills itself at an experience's end
    "loss",            # after the memory: the strategy's loss reads the replay batch the memory handed over
    "finetune",        # last: finetunes on the memory once the memory's end-of-experience update is done
)


@dataclass(frozen=True)
class ReplayParts:
    """The plugins of one run, by role (`PLUGIN_ORDER`); None where a run has none.

    `memory` is the memory itself (GDumb's protocol reads it without replaying it: then
    `memory_replays` is False and the memory is no plugin of the training loop)."""
    memory: Any = None                  # a ReplayMemoryPlugin, Avalanche's TimedReplayPlugin, or None
    loss: SupervisedPlugin | None = None
    memory_replays: bool = True
    checkpoints: Any = None
    progress: Any = None
    guard: Any = None
    stream_augment: SupervisedPlugin | None = None
    finetune: SupervisedPlugin | None = None

    def part(self, role: str) -> Any:
        """The plugin of `role` (one of PLUGIN_ORDER) in the training loop, or None."""
        if role == "memory" and not self.memory_replays:
            return None
        return getattr(self, role)

    def plugins(self) -> list:
        """The parts a run has, in PLUGIN_ORDER."""
        return [p for p in (self.part(role) for role in PLUGIN_ORDER) if p is not None]

    def with_parts(self, **parts: Any) -> ReplayParts:
        """These parts, with `parts` (roles of PLUGIN_ORDER) set."""
        unknown = sorted(set(parts) - set(PLUGIN_ORDER))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not a role of PLUGIN_ORDER ({', '.join(PLUGIN_ORDER)})")
        return dataclasses.replace(self, **parts)


def check_plugin_order(plugins: list, parts: ReplayParts) -> None:
    """A ValueError unless every part of `parts` is in `plugins` once, in PLUGIN_ORDER
    (other plugins, Avalanche's evaluator or a user's, may stand anywhere between)."""
    at = {}
    for role in PLUGIN_ORDER:
        part = parts.part(role)
        if part is None:
            continue
        where = [i for i, p in enumerate(plugins) if p is part]
        if len(where) != 1:
            raise ValueError(f"the {role} plugin must be in the strategy's plugins once, is there {len(where)} times")
        at[role] = where[0]
    found = sorted(at, key=at.get)
    if found != [role for role in PLUGIN_ORDER if role in at]:
        raise ValueError(f"plugins out of order: {' < '.join(found)}; ccl.assembly.PLUGIN_ORDER is "
                         f"{' < '.join(PLUGIN_ORDER)}")


def build_replay(*, spec: MemorySpec, settings: Any, strategy: Strategy | None, strategy_settings: Any,
                 filler_settings: FillerSettings = FillerSettings(),
                 mem_size: int, mem_batch: int, device: torch.device, learner: nn.Module,
                 real_images: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]] | None,
                 codec: MemoryCodec | None = None, augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 stream_augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 schedule: list[list[int]] | None = None, stream_slots: bool = False, batch_size: int = 32,
                 progress: bool = False, checkpoint: LoopCheckpoint | None = None,
                 guard: Any = None, boundaries: bool = True) -> ReplayParts:
    """The memory, the strategy's loss over it and the stream's augmentation of a run.

    Args:
        spec: the memory's registry entry (`ccl.memory.MEMORIES`).
        settings: its method's settings (None for a memory without).
        filler_settings: what a condensing memory does around its method (holdout, ...).
        strategy: the replay strategy's registry entry (`ccl.strategies.STRATEGIES`), or
            None for the template's own criterion.
        strategy_settings: its hyperparameters.
        mem_size, mem_batch: images in memory; memory images appended to each minibatch.
        device: where the memory lives.
        learner: the model that trains: DataDAM with `network = "learner"` takes its
            architecture for the random networks (the memory's fillers get it anew at
            each update, as trained so far).
        real_images: classes -> (images, labels) of their real training images.
        codec: how images are stored (None: float32 as given).
        augment: a fresh augmentation of every replayed image, or None.
        stream_augment: an augmentation of the stream samples alone, or None.
        schedule: the classes of every experience, if known (sizes each class will be cut to).
        stream_slots: new classes' slots hold their stream samples while they stream.
        batch_size: the training minibatch (Avalanche's reservoir sizes its batches by it).
        progress: progress bars while condensing.
        checkpoint: how a condensation saves and resumes its iterations.
        guard: the divergence guard (`ccl.guards.DivergenceGuard`), or None.
        boundaries: False on an online stream that hides where experiences end.
    """
    needs = strategy.memory_needs(strategy_settings) if strategy is not None else MemoryNeeds()
    if getattr(settings, "network", None) == "learner":  # DataDAM's random networks take the learner's architecture
        spec = dataclasses.replace(spec, method=functools.partial(spec.method, network=learner))
    memory = spec.make_plugin(mem_size=mem_size, mem_batch=mem_batch, device=device, codec=codec, augment=augment,
                              settings=settings, progress=progress, real_images=real_images, schedule=schedule,
                              stream_slots=stream_slots, batch_size=batch_size, needs=needs, checkpoint=checkpoint,
                              filler_settings=filler_settings, device_memory=FeatureMemory, boundaries=boundaries)
    loss = strategy.plugin(memory, strategy_settings) if strategy is not None and strategy.plugin is not None else None
    return ReplayParts(memory=memory, loss=loss, memory_replays=strategy is None or not strategy.memory_alone,
                       guard=guard, stream_augment=AugmentPlugin(stream_augment) if stream_augment else None)


class FeatureMemory(DeviceMemoryPlugin):
    """The class-balanced memory, whose fillers see a model without `embed` through
    `WithEmbed` (the input of its last nn.Linear); a model with `embed` (ccl's) as it is."""

    def update(self, new_classes: list[int], learner: nn.Module) -> None:
        if not hasattr(learner, "embed") and last_linear(learner) is not None:
            learner = WithEmbed(learner)  # (a model with neither was refused unless its memory needs no features)
        super().update(new_classes, learner)


class WithEmbed(nn.Module):
    """`model`, with `embed(x)`: the (N, D) input of its last nn.Linear, caught by a forward
    hook that lives for one call (so a deep copy of this module carries no hook)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.head = last_linear(model)  # the name of the layer, looked up on every call
        if self.head is None:
            raise ValueError(f"{type(model).__name__} has no nn.Linear layer to take features before")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        caught: list[torch.Tensor] = []
        handle = self.model.get_submodule(self.head).register_forward_hook(
            lambda module, args, output: caught.append(args[0]))
        try:
            self.model(x)
        finally:
            handle.remove()
        return caught[-1].flatten(1)  # (N, D)
