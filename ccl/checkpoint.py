"""A run's state between experiences as tensors and plain values (loaded with
weights_only=True, so a crafted checkpoint runs nothing): the generators' states and
what Avalanche's metrics carry from one experience to the next."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ccl.errors import CclError
from ccl.io import load_torch

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict:
    """Every generator's state as tensors and plain types (a checkpoint holds no pickles)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos,
                                                      has_gauss, cached],
             "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# What Avalanche's metrics carry from one experience to the next: forgetting and BWT keep
# each experience's first and last accuracy; everything else resets at every evaluation.
# Saved as plain values instead of pickling the metric objects (a pickle runs code on load).
_METRIC_STATE = ("train_exp_id", "eval_exp_id")


def metric_states(metrics: list) -> list[dict]:
    states = []
    for metric in metrics:
        state = {name: getattr(metric, name) for name in _METRIC_STATE if hasattr(metric, name)}
        if hasattr(metric, "forgetting"):
            state["initial"] = dict(metric.forgetting.initial)
            state["last"] = dict(metric.forgetting.last)
        states.append(state)
    return states


def restore_metric_states(metrics: list, states: list[dict]) -> None:
    if len(metrics) != len(states):
        raise CclError("the checkpoint's metrics do not match this run's; it cannot be resumed")
    for metric, state in zip(metrics, states):
        for name in _METRIC_STATE:
            if name in state:
                setattr(metric, name, state[name])
        if "initial" in state:
            metric.forgetting.initial = dict(state["initial"])
            metric.forgetting.last = dict(state["last"])


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by `train_and_evaluate` (tensors and plain types only), or a
    CclError naming the file; checkpoints of ccl before 2026-11-30 pickled Avalanche
    objects and are refused."""
    return load_torch(path, "checkpoint (delete it to restart the run from the beginning)")
