"""Fillers: what goes into a class's memory slots at the end of an experience.

A filler gets the new classes' real images and a budget per class and returns images
for those slots, in priority order (the plugin shrinks a class by keeping its first k).
Selection fillers return real images; condensing fillers return synthetic ones through
a `ccl.condense` method with the common contract, then rank them by herding on the
learner's features so that shrinking keeps the subset closest to the class mean.
"""
from __future__ import annotations

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
    """Base: `fill(real, labels, budget, learner, context) -> (images, labels)` in priority
    order. `context` is the memory's old-class (images, labels) after shrinking; only
    condensers that ask for it (`memory_context` in their settings) use it."""
    device: torch.device
    settings: Any = None
    progress: bool = True  # progress bars of long fillers (condensation)
    stats: dict = field(default_factory=dict)  # time per phase etc., read by the plugin

    def fill(self, real: torch.Tensor, labels: torch.Tensor, budget: dict[int, int],
             learner: nn.Module, context: tuple[torch.Tensor, torch.Tensor] | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class RandomFiller(Filler):
    """Class-balanced random real images."""

    def fill(self, real, labels, budget, learner, context=None):
        return random_real(real, labels, budget, self.device)


class HerdingFiller(Filler):
    """iCaRL herding on the learner's features: the real images whose mean is closest
    to the class mean, in the order herding picks them."""

    def fill(self, real, labels, budget, learner, context=None):
        real, labels = real.to(self.device), labels.to(self.device)
        feats = learner_features(learner, real)
        keep = torch.cat([idx[herding_order(feats[idx], k)] for _, k, idx in _per_class(labels, budget)])
        return real[keep], labels[keep]


class CondenseFiller(Filler):
    """Synthetic images from a `ccl.condense` method, ranked by herding on the learner."""
    method: Callable

    def __init__(self, device, settings, method: Callable, progress: bool = True):
        super().__init__(device, settings, progress)
        self.method = method

    def fill(self, real, labels, budget, learner, context=None):
        stats: dict = {}
        extra = {}
        if getattr(self.settings, "memory_context", False) and context is not None and len(context[1]):
            extra["context"] = context
        images, image_labels = self.method(real, labels, budget, self.device, self.settings,
                                           progress=self.progress, stats=stats, **extra)
        self.stats = stats
        order = _herding_rank(images, image_labels, learner)
        return images[order], image_labels[order]
