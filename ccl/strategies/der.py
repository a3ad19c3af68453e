"""DER and DER++ (Buzzega et al., NeurIPS 2020)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ccl.memory import MemoryNeeds
from ccl.strategies.base import STRATEGIES, ReplayLoss, Strategy


@dataclass(frozen=True)
class DERSettings:
    """mammoth's Seq-CIFAR-10 values for a 200-image buffer (DER's; DER++ registers its own)."""
    alpha: float = 0.3  # weight of the MSE to the stored logits
    beta: float = 0.0   # weight of the cross-entropy on a second memory batch (DER++)
    temperature: float = 1.0  # of the soft targets in DER++'s cross-entropy (SoftTargetSettings)

    def __post_init__(self):
        if self.alpha < 0 or self.beta < 0:
            raise ValueError("alpha and beta must not be negative")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def der_memory(settings: DERSettings) -> MemoryNeeds:
    """Every memory row keeps the learner's logits as it enters; DER++ (beta > 0) draws a
    second, independent memory batch for its cross-entropy."""
    return MemoryNeeds(draws=2 if settings.beta > 0 else 1, logits=True)


class DERPlugin(ReplayLoss):
    """Cross-entropy on the stream plus alpha times the MSE between the logits of memory
    samples now and the logits recorded when they entered the memory; DER++ adds beta
    times the cross-entropy of a second, independent memory batch.

    With `--memory reservoir` the logits are recorded as a sample streams by, as DER
    does; the class-balanced memories record them at the end of the experience that
    stores an image (real or condensed): condensed images exist only then. A condensed
    row with a soft target (PAD's learned labels) has its MSE taken to that target's
    logits instead of the learner's, and DER++'s cross-entropy to its softmax."""

    def __init__(self, memory, settings: DERSettings = DERSettings()):
        needs = der_memory(settings)
        if (memory.draws, memory.record_logits) != (needs.draws, needs.logits):
            raise ValueError(f"DER with beta={settings.beta} needs a memory built with {needs} "
                             f"(its strategy entry's memory_needs), not draws={memory.draws}, "
                             f"logits={memory.record_logits}")
        super().__init__(memory, settings)
        self.alpha, self.beta = settings.alpha, settings.beta

    def loss(self, output, y, stream):
        drawn = self.memory.last_draw  # (draws * n,) memory indices
        n = len(drawn) // self.memory.draws  # mem_batch, or fewer while a reservoir holds fewer
        loss = F.cross_entropy(output[:stream], y[:stream])
        target = self.memory.logits[drawn[:n]]  # (n, classes)
        soft = self.memory.soft_targets(drawn[:n])
        if soft is not None:
            target = torch.where(soft.isnan(), target, soft)
        loss = loss + self.alpha * F.mse_loss(output[stream:stream + n], target)
        if self.beta > 0:
            loss = loss + self.beta * self.memory_cross_entropy(output[stream + n:], y[stream + n:], drawn[n:])
        return loss


@dataclass(frozen=True)
class DERPPSettings(DERSettings):
    alpha: float = 0.1
    beta: float = 0.5


STRATEGIES.register("der", "dark experience replay: MSE to the logits stored with memory images (2020)")(
    Strategy(DERPlugin, DERSettings, memory_needs=der_memory))
STRATEGIES.register("der++", "DER plus cross-entropy on a second memory batch (2020)")(
    Strategy(DERPlugin, DERPPSettings, memory_needs=der_memory))
