"""A memory's rows as plain data: images as the codec stores them, labels, and the
optional per-row columns strategies read (DER's logits, condensed rows' soft targets).
`take`, `cat` and `state` live here once, so no memory branches on which columns it holds
(as mammoth's `Buffer` declares its per-row fields once). No Avalanche.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rows:
    """Memory rows.

    Args:
        images: (N, ...) images as stored (the memory's codec).
        labels: (N,) class indices.
        logits: (N, classes) the learner's logits as each row entered (DER), or None.
        soft: (N, classes) soft-target logits (PAD's learned labels, herding-soft's), NaN
            rows for rows without one; None where no row has one.
    """
    images: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor | None = None
    soft: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: torch.Tensor) -> Rows:
        """The rows `idx` (one gather per column)."""
        return Rows(self.images[idx], self.labels[idx], _take(self.logits, idx), _take(self.soft, idx))

    @staticmethod
    def cat(parts: list[Rows]) -> Rows:
        """The parts' rows one after the other; a column some part lacks is NaN in its rows."""
        return Rows(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]),
                    _column([p.logits for p in parts], [len(p) for p in parts]),
                    _column([p.soft for p in parts], [len(p) for p in parts]))

    def state(self) -> dict:
        """The rows as a checkpoint holds them: images, labels, and the columns present
        (`logits`, `soft_targets`)."""
        state = {"images": self.images, "labels": self.labels}
        if self.soft is not None:
            state["soft_targets"] = self.soft
        if self.logits is not None:
            state["logits"] = self.logits
        return state


def _take(column: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if column is None else column[idx]


def _column(columns: list[torch.Tensor | None], lengths: list[int]) -> torch.Tensor | None:
    """One column over parts: None where no part has it, else NaN rows for the parts without it."""
    present = next((c for c in columns if c is not None), None)
    if present is None:
        return None
    return torch.cat([c if c is not None else present.new_full((n, present.shape[1]), float("nan"))
                      for c, n in zip(columns, lengths)])
