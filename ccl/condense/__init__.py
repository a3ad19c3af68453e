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

from ccl.fields import dict_problem, number_problem, sgd_state_problem, tensor_problem
from ccl.units import duration

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


def progress_problem(progress: dict, loop: str, images: torch.Tensor | None, iterations: int) -> str | None:
    """What makes a loop's saved `progress` not a state of this loop (another method's,
    other images, an iteration past its end, a field missing or of another kind), or None.
    `images`: the loop's images, or None where they are not made yet (a run's checkpoint,
    checked as it is read): then any (M, C, H, W) float images, with every other field
    of their shape."""
    if not isinstance(progress, dict):
        return f"it should be a dictionary, not {type(progress).__name__}"
    if progress.get("loop") != loop:
        return f"it was saved by {str(progress.get('loop'))[:40]!r}, not {loop!r}"
    if number_problem(progress.get("iteration"), "iteration", 0, iterations, integer=True):
        return f"its iteration should be in 0..{iterations}, not {str(progress.get('iteration'))[:40]}"
    saved = progress.get("images")
    shape = tuple(images.shape) if images is not None else None
    if not torch.is_tensor(saved) or not saved.is_floating_point() or saved.dim() != 4 \
            or shape is not None and tuple(saved.shape) != shape:
        return f"its images should be of shape {shape if shape is not None else '(M, C, H, W)'}"
    problem = dict_problem(progress, "its", _PROGRESS_FIELDS[loop](progress, tuple(saved.shape), progress["iteration"]))
    return problem.replace("its.", "its ") if problem else None


def _datadam_fields(progress: dict, shape: tuple[int, ...], done: int) -> dict:
    """The fields of DataDAM's progress (`datadam._optimise`) besides its loop, iteration
    and images: the SGD state of the images, the last finite images, the loss summed
    since the last check, and what the loop reports."""
    info = {"iterations": lambda v, w: number_problem(v, w, 0, done, integer=True),
            "loss": lambda v, w: number_problem(v, w, nan=True), "stopped": _flag,
            "lr_images": lambda v, w: number_problem(v, w, 0),
            "loss_curve": lambda v, w: _numbers(v, w, nan=False)}
    return {"optimizer": lambda v, w: sgd_state_problem(v, [shape], w),
            "snapshot": lambda v, w: tensor_problem(v, w, shape, floating=True, finite=True),
            "loss_sum": lambda v, w: tensor_problem(v, w, (), floating=True),
            "since_check": lambda v, w: number_problem(v, w, 0, done, integer=True),
            "info": lambda v, w: dict_problem(v, w, info)}


def _pad_fields(progress: dict, shape: tuple[int, ...], done: int) -> dict:
    """The fields of PAD's progress (`pad.distill`) besides its loop, iteration and
    images: the learned tensors (the images, and the soft labels when it learns them)
    with their SGD states and last finite values, the student's learned rate, BatchNorm's
    running statistics, and what the loop reports."""
    learned = progress.get("learned")
    shapes = [tuple(t.shape) for t in learned] if isinstance(learned, list) and all(
        torch.is_tensor(t) for t in learned) else [shape]

    def learned_problem(value, where):
        if not (isinstance(value, list) and len(value) in (1, 2)):
            return f"{where} should list the images and, with soft labels, the labels"
        return tensor_problem(value[0], f"{where}[0]", shape, floating=True) or (
            tensor_problem(value[1], f"{where}[1]", (shape[0], None), floating=True) if len(value) == 2 else None)

    def optimisers(value, where):  # the images', the student rate's, the labels'
        wanted = [shape, (), *shapes[1:]]
        if not (isinstance(value, list) and len(value) == len(wanted)):
            return f"{where} should hold {len(wanted)} optimiser states"
        return next((p for i, (state, s) in enumerate(zip(value, wanted))
                     if (p := sgd_state_problem(state, [s], f"{where}[{i}]"))), None)

    def last_finite(value, where):
        if not (isinstance(value, list) and len(value) == len(shapes)):
            return f"{where} should hold one tensor per learned one"
        return next((p for i, (t, s) in enumerate(zip(value, shapes))
                     if (p := tensor_problem(t, f"{where}[{i}]", s, floating=True, finite=True))), None)

    def buffers(value, where):
        if isinstance(value, dict) and all(isinstance(k, str) and torch.is_tensor(t) for k, t in value.items()):
            return None
        return f"{where} should map names to tensors"

    info = {"iterations": lambda v, w: number_problem(v, w, 0, done, integer=True),
            "loss": lambda v, w: number_problem(v, w, nan=True), "syn_lr": lambda v, w: number_problem(v, w, 0),
            "recoveries": lambda v, w: number_problem(v, w, 0, integer=True), "stopped": _flag,
            "lr_img": lambda v, w: number_problem(v, w, 0)}
    return {"learned": learned_problem, "lr": lambda v, w: number_problem(v, w, nan=True),
            "optimisers": optimisers, "last_finite": last_finite, "last_lr": lambda v, w: number_problem(v, w, 0),
            "buffers": buffers, "info": lambda v, w: dict_problem(v, w, info)}


def _flag(value, where: str) -> str | None:
    return None if isinstance(value, bool) else f"{where} should be true or false"


def _numbers(value, where: str, nan: bool) -> str | None:
    if not isinstance(value, list):
        return f"{where} should be a list of numbers"
    return next((p for i, v in enumerate(value) if (p := number_problem(v, f"{where}[{i}]", nan=nan))), None)


_PROGRESS_FIELDS = {"datadam": _datadam_fields, "pad": _pad_fields}  # loop -> its fields' checks


def cost_line(name: str, seconds: float, iterations: int) -> str:
    """"PAD: ~3 min an iteration, ~32 min for this update": one iteration's time and the
    time of `iterations` of them, as rough as one timed iteration makes them."""
    return f"{name}: ~{duration(seconds)} an iteration, ~{duration(seconds * iterations)} for this update"


def announce_cost(name: str, seconds: float, iterations: int) -> None:
    """Log `cost_line` once a loop has timed its first iteration (`iterations`: those
    left, the timed one included): at INFO, or WARNING from LONG_UPDATE_S on, so that an
    update of hours (PAD on a ResNet-18 on CPU) is said before it runs, progress bar or not."""
    level = logging.WARNING if seconds * iterations >= LONG_UPDATE_S else logging.INFO
    log.log(level, "%s", cost_line(name, seconds, iterations))
