"""Fillers: what goes into a class's memory slots at the end of an experience.

A filler gets the new classes' real images and a budget per class and returns images
for those slots, in priority order (the plugin shrinks a class by keeping its first k).
Selection fillers return real images; condensing fillers return synthetic ones through
a `ccl.condense` method with the common contract, then rank them by herding on the
learner's features so that shrinking keeps the subset closest to the class mean.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ccl.condense import Condensed, LoopCheckpoint
from ccl.condense.methods import random_real
from ccl.condense.selection import herding_order
from ccl.training import reinitialise


@torch.no_grad()
def learner_features(learner: nn.Module, images: torch.Tensor, batch: int = 512,
                     logits: bool = False) -> torch.Tensor:
    """(n, d) embeddings of `images` under the learner, or with `logits` its (n, classes)
    outputs (eval mode, then restored)."""
    was_training = learner.training
    learner.eval()
    call = learner if logits else learner.embed
    out = torch.cat([call(images[i:i + batch]) for i in range(0, len(images), batch)])
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
    that match those prefixes (`nested`). `trajectory` is the learner's trajectory over
    the experience just trained (`ccl.condense.pad.LearnerTrajectory`), recorded by the
    memory for fillers whose `wants_trajectory` is true."""
    device: torch.device
    settings: Any = None
    progress: bool = True  # progress bars of long fillers (condensation)
    stats: dict = field(default_factory=dict)  # time per phase etc., read by the plugin

    @property
    def wants_trajectory(self) -> bool:
        return False

    def fill(self, real: torch.Tensor, labels: torch.Tensor, budget: dict[int, int],
             learner: nn.Module, context: tuple[torch.Tensor, torch.Tensor] | None = None,
             later: dict[int, list[int]] | None = None, trajectory=None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def work(self, classes: int, slots: int, real_per_class: float, learner_width: int) -> float:
        """A rough cost of filling `slots` slots of `classes` new classes of `real_per_class`
        real images each, in sample-passes (one image forward and backward through the
        learner, of `learner_width` channels; a forward alone is about a third): the run's
        time estimate (ccl.estimate) prices it at the training rate until a fill has been
        timed. Random images: none."""
        return 0.0


class RandomFiller(Filler):
    """Class-balanced random real images."""

    def fill(self, real, labels, budget, learner, context=None, later=None, trajectory=None):
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

    def work(self, classes, slots, real_per_class, learner_width):
        return classes * real_per_class / 3  # the learner's features of every real image

    def fill(self, real, labels, budget, learner, context=None, later=None, trajectory=None):
        return herding_exemplars(real.to(self.device), labels.to(self.device), budget, learner)


class SoftHerdingFiller(HerdingFiller):
    """Herding's exemplars, each with the learner's logits on it as its soft target:
    replay trains a row toward what the learner said of it when it was stored (a
    distillation on the memory, as DER's logit term, through the strategies' soft
    cross-entropy). Measured beside herding in docs/results.md (2026-12-04): the soft
    target PAD's learned labels start from, without the matching that made them worse."""

    def fill(self, real, labels, budget, learner, context=None, later=None, trajectory=None):
        images, image_labels = super().fill(real, labels, budget, learner)
        logits = learner_features(learner, images, logits=True).float()  # (S, outputs)
        return Condensed(images, image_labels, logits, torch.arange(logits.shape[1], device=logits.device))


@dataclass(frozen=True)
class FillerSettings:
    """What a condensing memory does around its method under `ccl run`, where there is a
    learner, an old classes' memory and a schedule of cuts; a standalone condensation
    (`ccl condense`) has none of them. Presets carry these keys beside the method's
    (`ccl.memory.split_settings` splits them); which of them a memory takes is its
    registry entry's `filler_keys`."""
    # Hold out this share of each class's real images and keep a class's condensed images
    # only where they represent the held-out ones better than the real images they started
    # from (`keep_if_better`). 0 = always keep.
    holdout: float = 0.0
    # With the method's `nested` and init "herding": condense only the images the next cut
    # keeps; the rest of each class stays herding's real exemplars, replayed for one
    # experience.
    lasting_only: bool = False
    # Condense each experience's new classes with the memory's old-class images as fixed
    # `context` (PAD: see `ccl.condense.pad`).
    memory_context: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")


class CondenseFiller(Filler):
    """Synthetic images from a `ccl.condense` method, in priority order.

    Settings of the condenser read here: `init = "herding"` starts from the learner's
    herding exemplars (in herding order); `nested` matches every size the class will be
    cut to, so its order is kept as the priority order; otherwise the images are ranked
    by herding on the learner. `guide_weight > 0` hands the learner over as the guide
    network. `expert = "learner"` (PAD) matches the learner's own trajectory, which the
    memory records while the experience trains and hands over as `trajectory`.

    The filler's own settings (`FillerSettings`): `memory_context` hands over the old
    classes' memory. `holdout > 0` keeps that share of each class's real images out of
    condensation and, class by class, keeps the condensed images only where they represent
    those held-out images better than the real images they started from (`stats["kept"]`
    records the decision). `lasting_only` (with `nested` and the herding start) condenses
    only the images the next cut keeps and appends the rest of the herding start as real
    images: those are replayed for one experience only.

    `checkpoint` (a `ccl.condense.LoopCheckpoint`) is handed to the method, which saves
    and resumes its iterations through it (a run's checkpoints inside a condensation).

    A method that learns soft labels (PAD's `soft_labels`), or `soft_labels` on one that
    learns none (DataDAM: the learner's logits on the condensed images), makes `fill` return a
    `Condensed` whose `soft_labels` are (S, outputs) logits over the learner's outputs,
    NaN on the rows that hold real images (a refused class, the lasting-only tail).
    """
    method: Callable

    def __init__(self, device, settings, method: Callable, progress: bool = True,
                 checkpoint: LoopCheckpoint | None = None, filler_settings: FillerSettings = FillerSettings()):
        super().__init__(device, settings, progress)
        self.method, self.checkpoint, self.filler_settings = method, checkpoint, filler_settings

    def work(self, classes, slots, real_per_class, learner_width):
        condensing = getattr(self.settings, "work", None)  # a method's own cost, where it knows it
        herding = classes * real_per_class / 3 if getattr(self.settings, "init", None) == "herding" else 0.0
        return herding + (condensing(classes, slots, real_per_class, learner_width) if condensing else 0.0)

    @property
    def matches_learner(self) -> bool:
        return getattr(self.settings, "expert", None) == "learner"

    @property
    def wants_trajectory(self) -> bool:
        return self.matches_learner

    def fill(self, real, labels, budget, learner, context=None, later=None, trajectory=None):
        stats: dict = {}
        extra = {}
        option = functools.partial(getattr, self.settings)
        if self.matches_learner:
            if trajectory is None:
                raise ValueError("this memory matches the learner's trajectory, which only a "
                                 "training run records (the memory plugin's hooks)")
            extra["trajectory"] = trajectory
        real, labels = real.to(self.device), labels.to(self.device)
        holdout = self.filler_settings.holdout
        if holdout > 0:
            (real, labels), held = _split_per_class(real, labels, holdout)
        # A class never fills more slots than it has real images (left after the holdout), as
        # in the herding and random memories: a condensed set summarises its class's images
        # (`ccl condense` refuses an --ipc above them), and a herding start has no more to give.
        budget = {c: min(k, int((labels == c).sum())) for c, k in budget.items()}
        # on the learner's trajectory always: its minibatches mixed in the old classes
        if (self.filler_settings.memory_context or self.matches_learner) and context is not None and len(context[1]):
            extra["context"] = context
        if option("init", None) == "herding":
            extra["init"] = herding_exemplars(real, labels, budget, learner)
        elif holdout > 0:
            extra["init"] = random_real(real, labels, budget, self.device)
        nested = option("nested", False) and later is not None
        if nested:
            extra["prefix_sizes"] = later
        if option("guide_weight", 0.0) > 0:
            extra["guide"] = learner
        if self.checkpoint is not None:
            extra["checkpoint"] = self.checkpoint
        tail = None
        if nested and self.filler_settings.lasting_only and option("init", None) == "herding":
            budget, extra["init"], tail = _lasting(budget, extra["init"], later)
            stats["condensed_sizes"] = {str(c): n for c, n in budget.items()}
        result = self.method(real, labels, budget, self.device, self.settings,
                             progress=self.progress, stats=stats, **extra)
        images, image_labels = result
        soft = None  # (S, outputs) over the learner's outputs
        if isinstance(result, Condensed) and result.soft_labels is not None:
            soft = result.soft_targets(learner_features(learner, images[:1], logits=True).shape[1])
        elif option("soft_labels", False):  # a method that learns none: the learner's logits
            soft = learner_features(learner, images, logits=True).float()
        if holdout > 0:
            images, stats["kept"], stats["heldout_ratio"] = keep_if_better(
                images, extra["init"][0], image_labels, held, learner, later or {})
            if soft is not None:  # a refused class holds real images: no soft label
                refused = torch.tensor([stats["kept"][str(c)] == "real" for c in image_labels.tolist()],
                                       device=soft.device)
                soft[refused] = float("nan")
        rows = [images, image_labels] + ([soft] if soft is not None else [])
        if tail is not None:
            tail = [*tail] + ([soft.new_full((len(tail[1]), soft.shape[1]), float("nan"))]
                              if soft is not None else [])
            rows = _after_each_class(rows, tail)
        self.stats = stats
        if not nested:
            order = _herding_rank(rows[0], rows[1], learner)
            rows = [r[order] for r in rows]
        if soft is None:
            return rows[0], rows[1]
        return Condensed(rows[0], rows[1], rows[2], torch.arange(soft.shape[1], device=soft.device))


def _lasting(budget: dict[int, int], start: tuple[torch.Tensor, torch.Tensor], later: dict[int, list[int]]):
    """Split each class's herding start at the size the next cut keeps: (the budget to
    condense, its start, the rest as real exemplars). The rest is replayed for one
    experience only, as the herding memory's own images are."""
    images, labels = start
    head, tail, lasting = [], [], {}
    for c, k in budget.items():
        at = torch.nonzero(labels == c).flatten()  # in herding order
        lasting[c] = n = min([k, *later.get(c, [])[:1]])
        head.append(at[:n])
        tail.append(at[n:])
    head, tail = torch.cat(head), torch.cat(tail)
    return lasting, (images[head], labels[head]), (images[tail], labels[tail])


def _after_each_class(rows: list[torch.Tensor], tail: list[torch.Tensor]) -> list[torch.Tensor]:
    """Row-aligned tensors (images, labels, ...) with each class's rows followed by its
    `tail` rows, classes in their order in `rows[1]`."""
    labels, tail_labels = rows[1], tail[1]
    parts = [[torch.cat([r[labels == c], t[tail_labels == c]]) for r, t in zip(rows, tail)]
             for c in labels.unique_consecutive().tolist()]
    return [torch.cat([p[i] for p in parts]) for i in range(len(rows))]


def _split_per_class(real: torch.Tensor, labels: torch.Tensor, fraction: float):
    """((kept images, labels), (held-out images, labels)): a random `fraction` of every
    class held out (at least one image, never all)."""
    keep, held = [], []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), device=idx.device)]
        n = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        held.append(idx[:n])
        keep.append(idx[n:])
    keep, held = torch.cat(keep), torch.cat(held)
    return (real[keep], labels[keep]), (real[held], labels[held])


@torch.no_grad()
def keep_if_better(condensed: torch.Tensor, start: torch.Tensor, labels: torch.Tensor,
                   held: tuple[torch.Tensor, torch.Tensor], learner: nn.Module,
                   later: dict[int, list[int]], networks: int = 4):
    """Per class, the condensed images or the real ones they started from, whichever set
    (and each prefix the schedule will cut it to) has class-mean embeddings closer to the
    held-out real images': under the learner's normalised features and `networks` random
    copies of its architecture, as a ratio condensed / start averaged over the networks.

    Returns:
        the chosen images (same layout), {class: "condensed" | "real"} and {class: ratio}.
    """
    nets = [learner] + [_random_copy(learner) for _ in range(networks)]
    held_x, held_y = held
    chosen, kept, ratios = condensed.clone(), {}, {}
    for c in labels.unique().tolist():
        at = torch.nonzero(labels == c).flatten()  # positions of class c, in priority order
        sizes = [len(at), *(s for s in later.get(c, []) if 1 <= s < len(at))]
        target_x = held_x[held_y == c]
        ratio = []
        for net in nets:
            target = _normalised_features(net, target_x).mean(0)  # (d,)
            dist = []
            for x in (condensed, start):
                feats = _normalised_features(net, x[at])  # (n, d), once per set; prefixes below
                dist.append(sum(float((feats[:s].mean(0) - target).pow(2).sum()) for s in sizes))
            ratio.append(dist[0] / max(dist[1], 1e-12))
        ratios[str(c)] = sum(ratio) / len(ratio)
        kept[str(c)] = "condensed" if ratios[str(c)] < 1 else "real"
        if kept[str(c)] == "real":
            chosen[at] = start[at]
    return chosen, kept, ratios


def _normalised_features(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(learner_features(net, images), dim=1)  # (n, d)


def _random_copy(learner: nn.Module) -> nn.Module:
    net = copy.deepcopy(learner)
    reinitialise(net)
    return net
