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

A method whose loop runs long (DataDAM, PAD) also takes `checkpoint`, a `LoopCheckpoint`
through which its caller saves the loop's progress and resumes it; the method itself
never writes a file.

Such a loop times its first iteration and logs what an iteration and the whole update
will take (`announce_cost`): PAD always, DataDAM on a learner's architecture.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

# An update projected to take this long or longer is announced as a warning, which
# Python shows even where logging was never configured (a notebook using CondensedReplay).
LONG_UPDATE_S = 600.0


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


class LoopCheckpoint:
    """How a method's optimisation loop is saved and resumed, the method doing no I/O:
    its caller (the memory, under `ccl run`) decides when, and writes the file.

    The loop asks `resume()` once, after its set-up and before its first iteration: the
    progress of an interrupted run's loop to continue from, or None to start afresh
    (the caller then puts the generators back as they were when that progress was
    saved, so the iterations after it draw what they drew). After each iteration it
    asks `due()` and, when a save is due, hands `save` its progress: tensors and plain
    values, as they stand after that iteration, with "iteration" the next one to run.
    This base class never saves and never resumes.
    """

    def resume(self) -> dict | None:
        return None

    def due(self) -> bool:
        return False

    def save(self, progress: dict) -> None:
        pass


def progress_problem(progress: dict, loop: str, images: torch.Tensor, iterations: int) -> str | None:
    """What makes a loop's saved `progress` not a state of this loop (another method's,
    other images, an iteration past its end), or None."""
    if progress.get("loop") != loop:
        return f"it was saved by {progress.get('loop')!r}, not {loop!r}"
    if not (type(progress.get("iteration")) is int and 0 <= progress["iteration"] <= iterations):
        return f"its iteration should be in 0..{iterations}"
    saved = progress.get("images")
    if not torch.is_tensor(saved) or saved.shape != images.shape:
        return f"its images should be of shape {tuple(images.shape)}"
    return None


def cost_line(name: str, seconds: float, iterations: int) -> str:
    """"PAD: ~190 s an iteration, ~32 min for this update": one iteration's time and the
    time of `iterations` of them, as rough as one timed iteration makes them."""
    return f"{name}: ~{_about(seconds, 600)} an iteration, ~{_about(seconds * iterations)} for this update"


def announce_cost(name: str, seconds: float, iterations: int) -> None:
    """Log `cost_line` once a loop has timed its first iteration (`iterations`: those
    left, the timed one included): at INFO, or WARNING from LONG_UPDATE_S on, so that an
    update of hours (PAD on a ResNet-18 on CPU) is said before it runs, progress bar or not."""
    level = logging.WARNING if seconds * iterations >= LONG_UPDATE_S else logging.INFO
    log.log(level, "%s", cost_line(name, seconds, iterations))


def _about(seconds: float, in_seconds_below: float = 90) -> str:
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < in_seconds_below:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
