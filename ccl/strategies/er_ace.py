"""ER-ACE (Caccia et al., ICLR 2022)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ccl.strategies.base import STRATEGIES, ReplayLoss, SoftTargetSettings, Strategy


class ACEPlugin(ReplayLoss):
    """ER-ACE as mammoth's `er_ace.py`: the stream samples' cross-entropy does not see the
    logits of old classes absent from their batch, so new classes stop pushing old ones
    down; memory samples get the plain cross-entropy over every logit; the two terms are
    summed.

    Departs from Avalanche's `ACECriterion`, which averages the two terms (half the step
    on each) and also masks the classes not seen yet, and computes softmax then log
    (not finite past a logit gap of about 88); mammoth's mask keeps unseen classes, and
    log-softmax stays finite. Departs from mammoth: one forward over stream and memory
    samples together (mammoth makes two; the same under instance norm), and a plain
    linear head (mammoth's ER-ACE defaults to a cosine one). Memory rows with soft
    targets (PAD's learned labels) take cross-entropy to them (`SoftTargetSettings`)."""

    def loss(self, output, y, stream):
        old = torch.tensor(self.memory.classes, dtype=torch.long, device=y.device)  # of earlier experiences
        absent = old[~torch.isin(old, y[:stream])]  # old classes this stream batch does not hold
        stream_logits = output[:stream].index_fill(1, absent, torch.finfo(output.dtype).min)
        return (F.cross_entropy(stream_logits, y[:stream])
                + self.memory_cross_entropy(output[stream:], y[stream:], self.memory.last_draw))


STRATEGIES.register("er-ace", "ER with asymmetric cross-entropy (Caccia et al. 2022)")(
    Strategy(ACEPlugin, SoftTargetSettings, stream_slots=True))
