"""Replay strategies: how the learner's loss uses the on-device memory's samples.

One module a strategy, each ending with its registry line; `er` keeps Avalanche's plain
cross-entropy over the whole minibatch. Any on-device memory (real or condensed) works
with any strategy.
"""
from __future__ import annotations

from ccl.strategies.base import STRATEGIES, ERPlugin, NoSettings, ReplayLoss, SoftTargetSettings, Strategy, er_plugin

STRATEGIES.register("er", "experience replay: one cross-entropy over stream and memory samples")(
    Strategy(er_plugin, SoftTargetSettings, needs_replay=False, online=True))

from ccl.strategies import agem, bic, der, er_ace, gdumb, icarl  # noqa: E402, F401  (each registers itself)
from ccl.strategies.agem import AGEMPlugin  # noqa: E402
from ccl.strategies.bic import BiCPlugin  # noqa: E402
from ccl.strategies.der import DERPlugin, DERSettings  # noqa: E402
from ccl.strategies.er_ace import ACEPlugin  # noqa: E402
from ccl.strategies.finetune import FinetunePlugin  # noqa: E402
from ccl.strategies.gdumb import GDumbPlugin  # noqa: E402
from ccl.strategies.icarl import ICaRLPlugin, NearestMean  # noqa: E402

__all__ = ["STRATEGIES", "Strategy", "NoSettings", "SoftTargetSettings", "ReplayLoss", "ERPlugin", "ACEPlugin", "AGEMPlugin", "BiCPlugin",
           "DERPlugin", "DERSettings", "FinetunePlugin", "GDumbPlugin", "ICaRLPlugin", "NearestMean"]
