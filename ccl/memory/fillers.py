"""Fillers: what goes into a class's memory slots at the end of an experience.

A filler gets the new classes' real images and a budget per class and returns images
for those slots, in priority order (the plugin shrinks a class by keeping its first k).
Selection fillers return real images; condensing fillers return synthetic ones through
a `ccl.condense` method with the common contract, then rank them by herding on the
learner's features so that shrinking keeps the subset closest to the class mean.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ccl.condense.methods import random_real
from ccl.condense.selection import herding_order


@torch.no_grad()
def learner_features(learner: nn.Module, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """(n, d) embeddings of `images` under the learner (eval mode, then restored)."""
    was_training = learner.training
    learner.eval()
    out = torch.cat([learner.embed(images[i:i + batch]) for i in range(0, len(images), batch)])
    learner.train(was_training)
    return out


def _per_class(labels: torch.Tensor, budget: dict[int, int]):
    for c, k in budget.items():
        yield c, k, torch.nonzero(labels == c).flatten()


def _herding_rank(images: torch.Tensor, labels: torch.Tensor, learner: nn.Module) -> torch.Tensor:
    """Indices that put each class's images in herding order (classes kept grouped)."""
    feats = learner_features(learner, images)
    parts = []
    for c in labels.unique(sorted=False).tolist():
        idx = torch.nonzero(labels == c).flatten()
        parts.append(idx[herding_order(feats[idx])])
    return torch.cat(parts)


@dataclass
class Filler:
    """Base: `fill(real, labels, budget, learner, context, later) -> (images, labels)` in
    priority order. `context` is the memory's old-class (images, labels) after shrinking;
    only condensers that ask for it (`memory_context` in their settings) use it. `later`
    gives the sizes each new class will be cut to ({class: [sizes]}), for condensers
    that match those prefixes (`nested`)."""
    device: torch.device
    settings: Any = None
    progress: bool = True  # progress bars of long fillers (condensation)
    stats: dict = field(default_factory=dict)  # time per phase etc., read by the plugin

    def fill(self, real: torch.Tensor, labels: torch.Tensor, budget: dict[int, int],
             learner: nn.Module, context: tuple[torch.Tensor, torch.Tensor] | None = None,
             later: dict[int, list[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class RandomFiller(Filler):
    """Class-balanced random real images."""

    def fill(self, real, labels, budget, learner, context=None, later=None):
        return random_real(real, labels, budget, self.device)


def herding_exemplars(real: torch.Tensor, labels: torch.Tensor, budget: dict[int, int],
                      learner: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """iCaRL herding on the learner's features: the real images whose mean is closest to
    the class mean, grouped by class in budget order, each class in the order picked."""
    feats = learner_features(learner, real)
    keep = torch.cat([idx[herding_order(feats[idx], k)] for _, k, idx in _per_class(labels, budget)])
    return real[keep], labels[keep]


class HerdingFiller(Filler):
    """iCaRL herding on the learner's features, in the order herding picks them."""

    def fill(self, real, labels, budget, learner, context=None, later=None):
        return herding_exemplars(real.to(self.device), labels.to(self.device), budget, learner)


class CondenseFiller(Filler):
    """Synthetic images from a `ccl.condense` method, in priority order.

    Settings the condenser may carry, read here: `init = "herding"` starts from the
    learner's herding exemplars (in herding order); `nested` matches every size the class
    will be cut to, so its order is kept as the priority order; otherwise the images are
    ranked by herding on the learner. `guide_weight > 0` hands the learner over as the
    guide network; `memory_context` hands over the old classes' memory.
    """
    method: Callable

    def __init__(self, device, settings, method: Callable, progress: bool = True):
        super().__init__(device, settings, progress)
        self.method = method

    def fill(self, real, labels, budget, learner, context=None, later=None):
        stats: dict = {}
        extra = {}
        option = functools.partial(getattr, self.settings)
        if option("memory_context", False) and context is not None and len(context[1]):
            extra["context"] = context
        if option("init", None) == "herding":
            extra["init"] = herding_exemplars(real.to(self.device), labels.to(self.device), budget, learner)
        nested = option("nested", False) and later is not None
        if nested:
            extra["prefix_sizes"] = later
        if option("guide_weight", 0.0) > 0:
            extra["guide"] = learner
        images, image_labels = self.method(real, labels, budget, self.device, self.settings,
                                           progress=self.progress, stats=stats, **extra)
        self.stats = stats
        if nested:
            return images, image_labels
        order = _herding_rank(images, image_labels, learner)
        return images[order], image_labels[order]
