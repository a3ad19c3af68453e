"""A hybrid memory: per class, a few condensed images and real exemplars selected given
them, after Hybrid Memory Replay (Kong et al. 2024, arXiv 2410.15372).

HMR reports that distillation's gain under replay vanishes as the synthetic share of the
buffer grows, and mixes a few distilled exemplars with real ones chosen to cover what
the distilled ones miss. Here the condensed images come from DataDAM as the `datadam`
memory makes them (herding start, the learner as guide, nested prefixes), and the real
ones from herding conditioned on them (`ccl.condense.selection.conditioned_herding_order`).

The class-balanced memory shrinks a class by keeping the first k of its rows, so the
split must hold at every prefix: synthetic and real rows are interleaved so that the
first k rows hold `synthetic_count(k, share)` synthetic ones, and DataDAM matches exactly
the synthetic counts the schedule's later cuts keep. Departs from HMR: its distilled
exemplars are matched to a sliding window of the learner's recent checkpoints; here to
random networks and the learner at the experience's end (DataDAM's `guide_weight`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ccl.condense import Condensed, LoopCheckpoint
from ccl.condense.datadam import DataDAMSettings
from ccl.condense.selection import conditioned_herding_order, herding_order
from ccl.memory.fillers import Filler, learner_features


@dataclass(frozen=True)
class HybridSettings(DataDAMSettings):
    """DataDAM's settings for the condensed share, and the split.

    The defaults below are the hybrid's own; configs/hybrid.toml takes DataDAM's CPU preset
    (configs/datadam.toml) for the condensing part.
    """

    # Share of each class's rows that are condensed, at every size it is cut to. A quarter:
    # HMR's finding is that a few distilled exemplars carry the gain and more dilute it;
    # at the CPU protocol's 20 final slots a class keeps 5 condensed images beside 15 real
    # ones, and on digits' 2 final slots one of each. The condensation costs that share of
    # DataDAM's synthetic passes (its real passes stay).
    synthetic_share: float = 0.25
    # Every row, synthetic and real, is replayed toward the learner's logits on it when it
    # was stored (herding-soft's soft target, the baseline to beat). False: hard labels.
    soft_labels: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        share = self.synthetic_share
        if not (isinstance(share, (int, float)) and 0 < share <= 1):
            raise ValueError(f"HybridSettings.synthetic_share must be in (0, 1], got {share!r}")
        if self.lasting_only:
            raise ValueError("HybridSettings.lasting_only must be false: a hybrid memory condenses only its "
                             "synthetic rows, and those are kept at every cut")
        if self.holdout > 0:
            raise ValueError(f"HybridSettings.holdout must be 0, got {self.holdout}: the real rows are chosen "
                             "given the condensed ones, so neither set can be refused alone")


def synthetic_count(k: int, share: float) -> int:
    """How many of a class's first k rows are synthetic: share * k rounded half up, and at
    least one while k >= 1. At least one because a single condensed image is where
    condensation leads selection most (DataDAM 32.0 against herding 21.5 on CIFAR-10 at one
    image a class, in the DC and DataDAM papers' tables), so the smallest prefixes the cuts leave get one.
    It never grows by more than one from k to k + 1 (share <= 1), so an interleaving exists."""
    if k < 1:
        return 0
    return max(1, math.floor(share * k + 0.5 + 1e-9))  # 1e-9: 0.3 * 5 is 1.4999... in floats


def synthetic_layout(k: int, share: float) -> torch.Tensor:
    """(k,) bool: True at the positions of synthetic rows in a class's priority order, so
    that every prefix of length j holds `synthetic_count(j, share)` of them."""
    counts = torch.tensor([synthetic_count(j, share) for j in range(k + 1)])  # (k + 1,)
    return counts[1:] > counts[:-1]


class HybridFiller(Filler):
    """Per class, `synthetic_count(k, share)` images condensed by `method` (DataDAM) and the
    rest real images chosen given them, interleaved in priority order (`synthetic_layout`).

    The synthetic images start from the class's first herding exemplars (init "herding"),
    are matched at the synthetic counts of every size the class will be cut to (`nested`:
    the prefixes DataDAM matches are exactly what the cuts keep), with the learner as guide
    (`guide_weight`). Only they are condensed. Then each real position takes the real image
    that brings the mean of all rows so far closest to the class mean, under the learner's
    features. With `soft_labels` every row carries the learner's logits on it.
    """

    def __init__(self, device, settings: HybridSettings, method: Callable, progress: bool = True,
                 checkpoint: LoopCheckpoint | None = None):
        super().__init__(device, settings, progress)
        self.method, self.checkpoint = method, checkpoint

    def work(self, classes, slots, real_per_class, learner_width):
        share = self.settings.synthetic_share
        base, extra = divmod(slots, classes)  # the slots shared out as slots_per_class does
        synthetic = (classes - extra) * synthetic_count(base, share) + extra * synthetic_count(base + 1, share)
        features = classes * real_per_class / 3  # the learner's features of every real image, once
        soft = slots / 3 if self.settings.soft_labels else 0.0  # the learner's logits on every row
        return features + soft + self.settings.work(classes, synthetic, real_per_class, learner_width)

    def fill(self, real, labels, budget, learner, context=None, later=None, trajectory=None):
        settings, share = self.settings, self.settings.synthetic_share
        real, labels = real.to(self.device), labels.to(self.device)
        features = learner_features(learner, real)  # (N, d)
        members = {c: torch.nonzero(labels == c).flatten() for c in budget}
        # as herding: a class with fewer real images than slots holds that many rows
        layouts = {c: synthetic_layout(min(k, len(members[c])), share) for c, k in budget.items()}
        synthetic_budget = {c: int(layout.sum()) for c, layout in layouts.items()}

        extra: dict = {}
        if settings.init == "herding":  # the class's first herding exemplars
            start = torch.cat([idx[herding_order(features[idx], synthetic_budget[c])] for c, idx in members.items()])
            extra["init"] = (real[start], labels[start])
        if settings.nested and later is not None:
            extra["prefix_sizes"] = {c: [synthetic_count(s, share) for s in later.get(c, [])] for c in budget}
        if settings.guide_weight > 0:
            extra["guide"] = learner
        if self.checkpoint is not None:
            extra["checkpoint"] = self.checkpoint
        stats: dict = {"synthetic_sizes": {str(c): n for c, n in synthetic_budget.items()}}
        synthetic, _ = self.method(real, labels, synthetic_budget, self.device, settings,
                                   progress=self.progress, stats=stats, **extra)  # grouped by class
        synthetic_features = learner_features(learner, synthetic)  # (S, d)

        rows, row_labels, first = [], [], 0
        for c, idx in members.items():
            mine = torch.arange(first, first + synthetic_budget[c], device=synthetic.device)
            first += synthetic_budget[c]
            if not settings.nested:  # matched as one set: rank it as the condensing memories do
                mine = mine[herding_order(synthetic_features[mine])]
            layout = layouts[c].to(synthetic.device)
            chosen = idx[conditioned_herding_order(features[idx], synthetic_features[mine], layout)]
            class_rows = synthetic.new_empty(len(layout), *synthetic.shape[1:])  # (k, C, H, W)
            class_rows[layout] = synthetic[mine]
            class_rows[~layout] = real[chosen].to(synthetic.dtype)
            rows.append(class_rows)
            row_labels.append(torch.full((len(layout),), c, dtype=torch.long, device=synthetic.device))
        images, image_labels = torch.cat(rows), torch.cat(row_labels)
        self.stats = stats
        if not settings.soft_labels:
            return images, image_labels
        logits = learner_features(learner, images, logits=True).float()  # (rows, outputs)
        return Condensed(images, image_labels, logits, torch.arange(logits.shape[1], device=logits.device))
