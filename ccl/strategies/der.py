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
        super().__init__(memory, settings)
        self.alpha, self.beta = settings.alpha, settings.beta
        self.needs = der_memory(settings)

    def loss(self, output, y, batch):
        if (batch.draws, batch.logits is not None) != (self.needs.draws, self.needs.logits):
            raise ValueError(f"DER with beta={self.beta} needs a memory built with {self.needs} (its strategy "
                             f"entry's memory_needs), not one that draws {batch.draws} batches "
                             f"{'with' if batch.logits is not None else 'without'} logits")
        stream, n = batch.stream, batch.per_draw  # n: mem_batch, or fewer while a reservoir holds fewer
        loss = F.cross_entropy(output[:stream], y[:stream])
        target = batch.logits[:n]  # (n, classes)
        soft = batch.soft
        if soft is not None:
            target = torch.where(soft[:n].isnan(), target, soft[:n])
        loss = loss + self.alpha * F.mse_loss(output[stream:stream + n], target)
        if self.beta > 0:
            loss = loss + self.beta * self.memory_cross_entropy(output[stream + n:], y[stream + n:],
                                                                None if soft is None else soft[n:])
        return loss


@dataclass(frozen=True)
class DERPPSettings(DERSettings):
    alpha: float = 0.1
    beta: float = 0.5


STRATEGIES.register("der", "dark experience replay: MSE to the logits stored with memory images (2020)")(
    Strategy(DERPlugin, DERSettings, memory_needs=der_memory, online=True))
STRATEGIES.register("der++", "DER plus cross-entropy on a second memory batch (2020)")(
    Strategy(DERPlugin, DERPPSettings, memory_needs=der_memory, online=True))
