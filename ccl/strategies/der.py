"""DER and DER++ (Buzzega et al., NeurIPS 2020)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ccl.strategies.base import STRATEGIES, ReplayLoss, Strategy


@dataclass(frozen=True)
class DERSettings:
    """mammoth's Seq-CIFAR-10 values for a 200-image buffer (DER's; DER++ registers its own)."""
    alpha: float = 0.3  # weight of the MSE to the stored logits
    beta: float = 0.0   # weight of the cross-entropy on a second memory batch (DER++)

    def __post_init__(self):
        if self.alpha < 0 or self.beta < 0:
            raise ValueError("alpha and beta must not be negative")


class DERPlugin(ReplayLoss):
    """Cross-entropy on the stream plus alpha times the MSE between the logits of memory
    samples now and the logits recorded when they entered the memory; DER++ adds beta
    times the cross-entropy of a second, independent memory batch.

    With `--memory reservoir` the logits are recorded as a sample streams by, as DER
    does; the class-balanced memories record them at the end of the experience that
    stores an image (real or condensed): condensed images exist only then."""

    record_logits = True

    def __init__(self, memory, settings: DERSettings = DERSettings()):
        self.draws = 2 if settings.beta > 0 else 1
        super().__init__(memory, settings)
        self.alpha, self.beta = settings.alpha, settings.beta

    def loss(self, output, y, stream):
        drawn = self.memory.last_draw  # (draws * n,) memory indices
        n = len(drawn) // self.draws  # mem_batch, or fewer while a reservoir holds fewer
        loss = F.cross_entropy(output[:stream], y[:stream])
        loss = loss + self.alpha * F.mse_loss(output[stream:stream + n], self.memory.logits[drawn[:n]])
        if self.beta > 0:
            loss = loss + self.beta * F.cross_entropy(output[stream + n:], y[stream + n:])
        return loss


@dataclass(frozen=True)
class DERPPSettings(DERSettings):
    alpha: float = 0.1
    beta: float = 0.5


STRATEGIES.register("der", "dark experience replay: MSE to the logits stored with memory images (2020)")(
    Strategy(DERPlugin, DERSettings))
STRATEGIES.register("der++", "DER plus cross-entropy on a second memory batch (2020)")(
    Strategy(DERPlugin, DERPPSettings))
