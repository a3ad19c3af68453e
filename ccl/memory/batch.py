"""What a memory hands a strategy: the replay batch of one training step, and a read-only
view of the whole memory. Plain values, no Avalanche: a strategy's loss is a function
of (output, targets, batch), and it never reads or writes the memory's attributes (as
mammoth's `Buffer.get_data` returns the rows it sampled with their per-row fields).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class ReplayBatch:
    """One training step's minibatch, as the memory extended it: `stream` stream samples
    at the front, then `draws` independent memory batches of equal size (DER++: 2).

    Args:
        stream: stream samples at the front of the minibatch.
        draws: memory batches after them.
        rows: (R,) the memory rows replayed, in minibatch order (R = draws * batch).
        logits: (R, classes) the learner's logits recorded as each row entered the memory
            (DER's target), or None where the memory records none.
        soft: (R, classes) soft-target logits (PAD's learned labels; NaN rows: none), or
            None where no row of the memory has one.
    """
    stream: int
    draws: int
    rows: torch.Tensor
    logits: torch.Tensor | None = None
    soft: torch.Tensor | None = None

    @property
    def per_draw(self) -> int:
        """Rows in each memory batch: mem_batch, or fewer while a reservoir holds fewer."""
        return len(self.rows) // self.draws


@dataclass(frozen=True)
class MemoryView:
    """The whole memory, read-only, as a strategy that needs all of it sees it (iCaRL's
    class means, BiC's bias layer, GDumb's fresh learner, finetuning).

    Args:
        classes: the classes of the experiences that ended, in arrival order.
        labels: (M,) every row's label.
        decode: stored images -> (M, C, H, W) float images (the memory's codec).
        stored: (M, ...) the images as stored.
        augment: the augmentation replayed images get (x -> x), or None.
    """
    classes: tuple[int, ...]
    labels: torch.Tensor
    decode: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    stored: torch.Tensor = field(repr=False)
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def images(self) -> torch.Tensor:
        """(M, C, H, W) every row's image, decoded (a fresh tensor each call)."""
        return self.decode(self.stored)
