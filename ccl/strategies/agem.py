"""A-GEM (Chaudhry et al., ICLR 2019)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ccl.strategies.base import STRATEGIES, ReplayLoss, Strategy


class AGEMPlugin(ReplayLoss):
    """A-GEM (Chaudhry et al., ICLR 2019): the step follows the stream samples' gradient g,
    projected where it would raise the memory's loss: with g_ref the gradient of the
    memory batch's cross-entropy, g - (g . g_ref / g_ref . g_ref) g_ref when g . g_ref < 0.

    Departs from Avalanche's `AGEMPlugin` (which keeps its own CPU-side buffer of a few
    patterns per experience) by taking g_ref from the on-device memory, so it runs with any
    memory; and from mammoth's `agem.py` (a second forward for the memory batch, a buffer
    filled with one minibatch per task) by reading g_ref off the same forward: under
    instance norm the samples do not interact, so the gradient is the one a separate
    forward would give. The reference gradient takes the memory's hard labels; soft
    targets (PAD's learned labels) are not used."""

    def loss(self, output, y, batch):
        stream = batch.stream
        memory_loss = F.cross_entropy(output[stream:], y[stream:])
        self.reference = torch.autograd.grad(memory_loss, self.params, retain_graph=True, allow_unused=True)
        return F.cross_entropy(output[:stream], y[:stream])

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        self.params = [p for p in strategy.model.parameters() if p.requires_grad]
        self.reference = None

    def after_backward(self, strategy, **kwargs):
        if self.reference is None:
            return
        pairs = [(p.grad, r) for p, r in zip(self.params, self.reference) if p.grad is not None and r is not None]
        dot = sum((g * r).sum() for g, r in pairs)
        if dot < 0:  # one sync a step, as every A-GEM
            scale = dot / sum((r * r).sum() for _, r in pairs)
            for g, r in pairs:
                g.sub_(scale * r)
        self.reference = None


STRATEGIES.register("a-gem", "averaged gradient episodic memory: steps that would raise the memory's loss are "
                    "projected (2019)")(Strategy(AGEMPlugin))
