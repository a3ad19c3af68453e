"""The condensation methods by name, for `ccl condense` and the condensing memories.

Each entry pairs a function with the common contract (see `ccl.condense`) with the
dataclass of its settings. Variants are presets of the same function and dataclass
(configs/dm.toml is DataDAM with the SAM weight at 0; configs/mtt.toml is PAD with the
scheduler off and alpha 0), never copies of the code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ccl.condense import datadam, pad
from ccl.condense.selection import random_order
from ccl.registry import Registry


@dataclass(frozen=True)
class RandomSettings:
    """Random real images: no settings; the baseline every condensed set must beat."""


def random_real(real: torch.Tensor, labels: torch.Tensor, budget: dict[int, int], device: torch.device,
                settings: Any = None, *, init=None, progress: bool = True,
                stats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`budget[c]` random real images of each class c (the same contract as a condenser)."""
    keep = torch.cat([torch.nonzero(labels == c).flatten()[random_order(int((labels == c).sum()), k)]
                      for c, k in budget.items()])
    return real[keep].to(device), labels[keep].to(device)


@dataclass(frozen=True)
class Method:
    condense: Callable
    settings: type


METHODS: Registry[Method] = Registry("condensation method")
METHODS.register("random", "random real images per class (the baseline)")(Method(random_real, RandomSettings))
METHODS.register("datadam", "DataDAM: attention and embedding matching on random networks (ICCV 2023)")(
    Method(datadam.condense, datadam.DataDAMSettings))
METHODS.register("dm", "DM: DataDAM without the attention term (distribution matching)")(
    Method(datadam.condense, datadam.DataDAMSettings))
METHODS.register("pad", "PAD: trajectory matching, difficulty-scheduled experts, deep parameters only (2024)")(
    Method(pad.condense, pad.PADSettings))
METHODS.register("mtt", "MTT: plain trajectory matching (PAD without its two filters)")(
    Method(pad.condense, pad.PADSettings))
