"""The condensation methods by name, for `ccl condense` and the condensing memories.

Each entry pairs a function with the common contract (see `ccl.condense`) with the
dataclass of its settings. Variants are presets of the same function and dataclass
(configs/dm.toml is DataDAM with the SAM weight at 0; configs/mtt.toml is PAD with the
scheduler off and alpha 0), never copies of the code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Collection

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
    # What makes a variant that variant, applied after any preset and override: `dm` is
    # DataDAM without attention whatever preset it is given.
    fixed: dict[str, Any] = field(default_factory=dict)


METHODS: Registry[Method] = Registry("condensation method")
METHODS.register("random", "random real images per class (the baseline)")(Method(random_real, RandomSettings))
METHODS.register("datadam", "DataDAM: attention and embedding matching on random networks (ICCV 2023)")(
    Method(datadam.condense, datadam.DataDAMSettings))
METHODS.register("dm", "DM: DataDAM without the attention term (distribution matching)")(
    Method(datadam.condense, datadam.DataDAMSettings, fixed={"sam_weight": 0.0}))
METHODS.register("pad", "PAD: trajectory matching, difficulty-scheduled experts, deep parameters only (2024)")(
    Method(pad.condense, pad.PADSettings))
METHODS.register("mtt", "MTT: plain trajectory matching (PAD without its two filters)")(
    Method(pad.condense, pad.PADSettings, fixed={"scheduler": False, "alpha": 0.0}))


def method_settings(name: str, preset: str | None, overrides: dict[str, Any], aside: Collection[str] = ()) -> Any:
    """A method's settings: its dataclass's defaults <- the preset (the method's own,
    configs/<name>.toml, when None) <- overrides <- the variant's fixed settings.

    Args:
        aside: keys of the preset and the overrides that are not the method's (a
            condensing memory's filler settings, `ccl.memory.fillers.FillerSettings`,
            which presets made for `ccl run` carry beside the method's): left out here.
    """
    from ccl.config import from_dict, preset_values, preset_where
    from ccl.errors import CclError
    entry = METHODS.get(name).value
    for key, value in overrides.items():
        if key in entry.fixed and value != entry.fixed[key]:
            raise CclError(f"{name} is defined by {key} = {entry.fixed[key]!r}; for {key} = {value!r} "
                           f"use another method")
    values = {**preset_values(preset or name, explicit=preset is not None), **overrides, **entry.fixed}
    return from_dict(entry.settings, {k: v for k, v in values.items() if k not in aside}, preset_where(preset or name))
