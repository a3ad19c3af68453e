"""Condensation methods: pure torch, no Avalanche, no file I/O.

Every method is a function with the same contract, so the memory layer can call any of
them at the end of an experience and the CLI can call them standalone:

    condense(real, labels, budget, device, settings, *, init=None, progress=True, stats=None)
        -> (images, image_labels)

Args:
    real:   (N, C, H, W) float real images of the classes to condense, normalised
            (mean/std of the data set); on any device.
    labels: (N,) long class labels of `real`.
    budget: {class: number of synthetic images}; every class in it has real images.
    device: where the work happens and where the result lives.
    settings: the method's frozen dataclass of settings.
    init:   optional (images, labels) to start from instead of the method's own init
            (the images must match `budget`).
    progress: show a progress bar.
    stats:  optional dict the method fills with figures worth reporting (seconds per
            phase, final loss, whether it stopped early on a non-finite loss).

Returns:
    images (sum(budget.values()), C, H, W) float32 on `device`, grouped by class in the
    order of `budget`, and their (M,) long labels.

A method that also learns soft labels (PAD with `soft_labels`) returns a `Condensed`,
which unpacks as the same pair and carries them.

Randomness comes from torch's global generator, seeded once by the entry point.
"""
from __future__ import annotations

import torch


class Condensed(tuple):
    """What a method that learns labels returns: `(images, labels)`, which unpacks as the
    pair every method returns, with the soft labels learned beside them.

    Attributes:
        soft_labels: (S, K') logits, one row per image, or None.
        soft_classes: (K',) long: the class each column of `soft_labels` stands for.
    """

    def __new__(cls, images: torch.Tensor, labels: torch.Tensor, soft_labels: torch.Tensor | None = None,
                soft_classes: torch.Tensor | None = None):
        result = super().__new__(cls, (images, labels))
        result.soft_labels, result.soft_classes = soft_labels, soft_classes
        return result

    def soft_targets(self, outputs: int) -> torch.Tensor | None:
        """(S, outputs) logits over class ids 0..outputs-1, or None without soft labels.
        A class the labelling network had no output for gets the row's smallest logit: no
        more mass than the class it found least likely."""
        if self.soft_labels is None:
            return None
        soft, columns = self.soft_labels.float(), self.soft_classes.to(self.soft_labels.device)
        if int(columns.max()) >= outputs:
            raise ValueError(f"soft labels cover class {int(columns.max())}; the learner has {outputs} outputs")
        full = soft.min(1, keepdim=True).values.repeat(1, outputs)  # (S, outputs)
        full[:, columns] = soft
        return full
