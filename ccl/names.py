"""The names the command line takes, read without loading torch or Avalanche, so that a
typo is one line at once (the registries live in modules that take seconds to import;
tests/test_shipped_files.py fails when these lists drift from them)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ccl.errors import CclError
from ccl.resources import resource_dir

MEMORIES = ("none", "joint", "reservoir", "class-balanced-reservoir", "avalanche-reservoir", "random", "herding", "herding-soft", "dm", "datadam", "mtt", "pad")
STRATEGIES = ("er", "a-gem", "bic", "der", "der++", "er-ace", "gdumb", "icarl")
# each strategy's own settings (its registry entry's dataclass fields, `--strategy-set` keys)
STRATEGY_SETTINGS = {"er": ("temperature",), "a-gem": (), "bic": ("temperature", "bias_steps", "bias_lr"),
                     "der": ("alpha", "beta", "temperature"), "der++": ("alpha", "beta", "temperature"),
                     "er-ace": ("temperature",),
                     "gdumb": ("epochs", "lr", "min_lr", "schedule", "restart_epochs", "warmup_epochs", "batch_size",
                               "momentum", "weight_decay", "clip"),
                     "icarl": ()}
LEARNERS = ("convnet", "resnet18")  # what ccl.models.build_learner builds
NORMS = ("instance", "batch", "none")  # the ConvNet's normalisations


def scenarios() -> list[str]:
    return sorted(p.stem for p in resource_dir("scenarios").glob("*.toml"))


def check_name(kind: str, name: Any, names: list[str] | tuple[str, ...]) -> None:
    if name is not None and name not in names:
        raise CclError(f"unknown {kind} {name!r}; choose one of: {', '.join(names)}")


def check(values: dict[str, Any]) -> None:
    """The names and paths among run `values` that can be checked in milliseconds; the
    runner checks everything again, with the data, before any folder exists."""
    check_name("scenario", values.get("scenario"), scenarios())
    for name in str(values.get("memory") or "").split(","):
        check_name("memory", name.strip() or None, MEMORIES)
    for name in str(values.get("strategy") or "").split(","):
        check_name("strategy", name.strip() or None, STRATEGIES)
    data_dir = values.get("data_dir")
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise CclError(f"--data-dir {data_dir}: no such folder (to download a data set into it, create it first)")
