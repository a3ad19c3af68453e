"""ER-ACE (Caccia et al., ICLR 2022)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ccl.memory import MemoryNeeds
from ccl.strategies.base import STRATEGIES, ReplayLoss, SoftTargetSettings, Strategy


def ace_memory(settings: SoftTargetSettings) -> MemoryNeeds:
    """One memory batch per minibatch, from the second experience on: mammoth's ER-ACE
    (`task_free` off, its default) neither masks nor replays while `current_task` is 0."""
    return MemoryNeeds(first_experience=False)


class ACEPlugin(ReplayLoss):
    """ER-ACE as mammoth's `er_ace.py`: the stream samples' cross-entropy does not see the
    logits of old classes absent from their batch, so new classes stop pushing old ones
    down; memory samples get the plain cross-entropy over every logit; the two terms are
    summed. During the first experience there is neither mask nor memory term (mammoth
    checks `current_task > 0`): the memory, built with `ace_memory`'s needs, draws
    nothing until an experience has ended, although it already holds the first
    experience's own stream samples (reservoir or stream slots), and the loss is the
    stream's plain cross-entropy.

    Departs from Avalanche's `ACECriterion`, which averages the two terms (half the step
    on each) and also masks the classes not seen yet, and computes softmax then log
    (not finite past a logit gap of about 88); mammoth's mask keeps unseen classes, and
    log-softmax stays finite. Departs from mammoth: the mask covers only the classes of
    earlier experiences (mammoth's also hides a class of the current experience that is
    absent from the batch, when its index is below the highest seen so far; it reads
    classes as arriving in index order); one forward over stream and memory samples
    together (mammoth makes two; the same under instance norm); and a plain linear head
    (mammoth's ER-ACE defaults to a cosine one). Memory rows with soft targets (PAD's
    learned labels) take cross-entropy to them (`SoftTargetSettings`).

    On an online stream that hides experience boundaries (`ccl run --online`) the memory's
    classes are those its stream minibatches have brought so far
    (`ccl.memory.online.OnlineReservoirMemoryPlugin`): the mask then hides every class
    seen before that this batch does not hold, and the memory term starts at the second
    step, as mammoth's ER-ACE with `task_free` on (its online setting) does."""

    def __init__(self, memory, settings=None):
        super().__init__(memory, settings)
        self._old: tuple[tuple[int, ...], torch.Tensor] | None = None  # (classes, (num_classes,) mask of them)

    def old_classes(self, output: torch.Tensor) -> torch.Tensor:
        """(num_classes,) bool: the classes of earlier experiences, built again only when
        an experience has added some (not a new tensor from a list at every step)."""
        classes = self.memory().classes
        if self._old is None or self._old[0] != classes or self._old[1].device != output.device:
            mask = torch.zeros(output.shape[1], dtype=torch.bool, device=output.device)
            mask[list(classes)] = True
            self._old = (classes, mask)
        return self._old[1]

    def loss(self, output, y, batch):
        stream = batch.stream
        hidden = self.old_classes(output).index_fill(0, y[:stream], False)  # old classes this batch does not hold
        stream_logits = output[:stream].masked_fill(hidden, torch.finfo(output.dtype).min)
        return (F.cross_entropy(stream_logits, y[:stream])
                + self.memory_cross_entropy(output[stream:], y[stream:], batch.soft))


STRATEGIES.register("er-ace", "ER with asymmetric cross-entropy (Caccia et al. 2022)")(
    Strategy(ACEPlugin, SoftTargetSettings, stream_slots=True, memory_needs=ace_memory, online=True))
