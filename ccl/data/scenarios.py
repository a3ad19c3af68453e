"""Scenario definitions (one TOML file each under `scenarios/`) and the class split.

A scenario names a data set and how many experiences its classes are split into; the
class order comes from the seed unless given.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from ccl.config import from_dict, read_toml
from ccl.data import DATASETS
from ccl.errors import CclError
from ccl.resources import resource_dir


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    dataset: str       # a name in ccl.data.DATASETS
    experiences: int   # classes are split into this many experiences
    defaults: dict[str, Any] = field(default_factory=dict)  # run settings this data needs (e.g. depth for 8x8 images)

    def __post_init__(self):
        if self.experiences < 1:
            raise ValueError("experiences must be at least 1")
        DATASETS.get(self.dataset)


@cache
def scenarios() -> dict[str, Scenario]:
    """All shipped scenarios by name (file stem); a duplicate name is an error."""
    found: dict[str, Scenario] = {}
    for path in sorted(resource_dir("scenarios").glob("*.toml")):
        spec = from_dict(Scenario, {"name": path.stem, **read_toml(path)}, str(path))
        found[spec.name] = spec
    return found


def get_scenario(name: str) -> Scenario:
    known = scenarios()
    if name not in known:
        raise CclError(f"unknown scenario {name!r}; choose one of: {', '.join(known)}")
    return known[name]


def class_order(num_classes: int, seed: int, given: list[int] | None = None) -> list[int]:
    """The order classes arrive in: `given` (checked to be a permutation) or seeded."""
    if given is None:
        return [int(c) for c in np.random.default_rng(seed).permutation(num_classes)]
    if sorted(given) != list(range(num_classes)):
        raise CclError(f"--class-order must list each class 0..{num_classes - 1} exactly once, got {given}")
    return list(given)


def split_classes(order: list[int], experiences: int) -> list[list[int]]:
    """Consecutive groups of `order`, as equal as possible (earlier groups get the extra)."""
    if experiences > len(order):
        raise CclError(f"{experiences} experiences need at least as many classes, the data set has {len(order)}")
    return [list(map(int, g)) for g in np.array_split(order, experiences)]
