"""The checks of single fields: what ccl reads back (a checkpoint's tensors, a results
file's figures, a synthetic set's soft labels) and what it is given (numbers of a
settings dataclass, a memory's sizes), each before anything acts on it.

Every check returns what is wrong, as a phrase that names the field (`where`), or None;
the read site turns it into its one-line error (a CclError naming the file, or a
ValueError for the Python API). Nothing here imports torch at module level: the command
line checks JSON files and settings before torch loads.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

NUMBER = (int, float)


def number_problem(value: Any, where: str, low: float = -math.inf, high: float = math.inf,
                   integer: bool = False, nan: bool = False) -> str | None:
    """What keeps `value` from being a number in [low, high] (an integer with `integer`;
    a float NaN only with `nan`: a figure not measured yet), or None. Booleans are not
    numbers here, and neither is an infinity."""
    kinds = (int,) if integer else NUMBER
    if isinstance(value, bool) or not isinstance(value, kinds):
        return f"{where} should be {'an integer' if integer else 'a number'}, not {_shown(value)}"
    if nan and isinstance(value, float) and math.isnan(value):
        return None
    if not (math.isfinite(value) and low <= value <= high):  # NaN fails every comparison
        bounds = (f" in [{low:g}, {high:g}]" if math.isfinite(low) and math.isfinite(high) else
                  f" >= {low:g}" if math.isfinite(low) else f" <= {high:g}" if math.isfinite(high) else "")
        return f"{where} should be {'an integer' if integer else 'a finite number'}{bounds}, not {_shown(value)}"
    return None


def _shown(value: Any) -> str:
    """A value as a message quotes it: short, whatever it is."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def tensor_problem(value: Any, where: str, shape: Sequence[int | None] | None = None, floating: bool | None = None,
                   finite: bool = False) -> str | None:
    """What keeps `value` from being a tensor of `shape` (None: any size along that axis),
    of a floating (True) or integer (False) dtype, finite with `finite`, or None."""
    import torch
    if not torch.is_tensor(value):
        return f"{where} should be a tensor, not {type(value).__name__}"
    if shape is not None and (value.dim() != len(shape) or any(n is not None and n != m
                                                               for n, m in zip(shape, value.shape))):
        wanted = ", ".join("N" if n is None else str(n) for n in shape)
        return f"{where} should be a ({wanted}) tensor, not {tuple(value.shape)}"
    if floating is not None and value.is_floating_point() != floating:
        return f"{where} should be a {'floating-point' if floating else 'integer'} tensor, not {value.dtype}"
    if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        return f"{where} should be finite (it holds NaN or an infinity)"
    return None


def sgd_state_problem(state: Any, shapes: Sequence[tuple[int, ...]], where: str) -> str | None:
    """What keeps `state` from being torch.optim.SGD's `state_dict()` over parameters of
    `shapes` (one group, momentum buffers of the parameters' shapes), or None."""
    import torch
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)
            and groups[0].get("params") == list(range(len(shapes))) and isinstance(state.get("state"), dict)):
        return f"{where} should be the state of an optimiser of {len(shapes)} tensor(s)"
    for name in ("lr", "momentum"):
        if problem := number_problem(groups[0].get(name), f"{where}'s {name}", 0):
            return problem
    for i, param_state in state["state"].items():
        buffer = param_state.get("momentum_buffer") if isinstance(param_state, dict) else 0
        if type(i) is not int or not 0 <= i < len(shapes):
            return f"{where}.state holds {_shown(i)}, not a tensor's index"
        if not (buffer is None or torch.is_tensor(buffer) and tuple(buffer.shape) == tuple(shapes[i])):
            return f"{where}.state[{i}] should hold a momentum of shape {tuple(shapes[i])}"
    return None


def dict_problem(value: Any, where: str, fields: dict[str, Any]) -> str | None:
    """What keeps `value` from being a dict with at least `fields`, each checked by its
    function (value, where) -> problem or None; or None."""
    if not isinstance(value, dict):
        return f"{where} should be a dictionary, not {type(value).__name__}"
    for key, check in fields.items():
        if key not in value:
            return f"{where}.{key} is missing"
        if problem := check(value[key], f"{where}.{key}"):
            return problem
    return None


# A logit past this saturates a float32 softmax a hundred times over (exp(-104) is
# already 0): no network's output, and no label PAD learns, comes near it.
MAX_LOGIT = 1e4


def soft_targets_problem(soft: Any, rows: int, classes: int | None, where: str = "soft targets") -> str | None:
    """What keeps `soft` from being the soft targets of `rows` memory rows (or images of
    a synthetic set) over `classes` outputs (None: any number), or None: a (rows, classes)
    float tensor whose every row is either all NaN (no target: a real image) or finite
    logits of at most MAX_LOGIT, with at least one target (a memory keeps the field only
    while some row has one)."""
    import torch
    if problem := tensor_problem(soft, where, (rows, classes), floating=True):
        return problem
    missing = soft.isnan()
    if not bool((missing.all(1) | ~missing.any(1)).all()):
        return f"{where}: a row should be all NaN (no target) or all numbers"
    if bool(missing.all()) and rows:
        return f"{where} are all NaN (a memory keeps them only while a row has one)"
    held = soft[~missing.all(1)]
    if not bool(torch.isfinite(held).all()) or (len(held) and float(held.abs().max()) > MAX_LOGIT):
        return f"{where} should be finite logits of at most {MAX_LOGIT:g} in size"
    return None


def classes_problem(classes: Any, labels: list[int], seen: set[int] | None, arriving: set[int],
                    where: str = "classes") -> str | None:
    """What keeps `classes` (a memory's classes seen so far) from fitting its rows'
    `labels`: class indices, each once, of the classes the run has trained on (`seen`;
    None: not checked), and every row's class among them or `arriving` (the classes of
    the experience in progress, whose rows enter before their class is recorded); or None."""
    if not (isinstance(classes, list) and all(type(c) is int for c in classes)):
        return f"{where} should be a list of class indices"
    if len(set(classes)) != len(classes):
        return f"{where} names a class twice"
    if seen is not None and not set(classes) <= seen:
        return f"{where} names class {min(set(classes) - seen)}, which the run has not trained on"
    if stray := set(labels) - set(classes) - arriving:
        return f"{where} lacks class {min(stray)}, which rows of the memory hold"
    return None


# A results file's figures: accuracies are fractions; forgetting and backward transfer
# differences of two of them; times, sizes and memory figures counts or amounts. A dict
# gives its keys' ranges; a range holds for every number of a list.
ACCURACY = (0.0, 1.0)
DIFFERENCE = (-1.0, 1.0)
AMOUNT = (0.0, math.inf)
RESULT_RANGES = {"final_average_accuracy": ACCURACY, "seen_accuracy": ACCURACY, "average_accuracy": ACCURACY,
                 "accuracy_matrix": ACCURACY, "average_forgetting": DIFFERENCE, "forgetting": DIFFERENCE,
                 "final_bwt": DIFFERENCE, "bwt": DIFFERENCE, "train_seconds": AMOUNT,
                 "memory_update_seconds": AMOUNT, "eval_seconds": AMOUNT, "total_seconds": AMOUNT,
                 "peak_ram_mib": AMOUNT, "memory_size": {"images": AMOUNT, "bytes": AMOUNT}}


def results_values_problem(results: dict, ranges: dict = RESULT_RANGES, where: str = "") -> str | None:
    """The first figure of a results file (checked for shape already) outside its range
    (`ranges`; every number finite), or None."""
    def first(value: Any, at: str, bounds: tuple[float, float]) -> str | None:
        if isinstance(value, list):
            return next((p for i, v in enumerate(value) if (p := first(v, f"{at}[{i}]", bounds))), None)
        return number_problem(value, at, *bounds)
    for key, bounds in ranges.items():
        if key not in results:
            continue
        value, at = results[key], f"{where}{key}"
        problem = (results_values_problem(value, bounds, f"{at}.") if isinstance(bounds, dict) and isinstance(value, dict)
                   else None if isinstance(bounds, dict) else first(value, at, bounds))
        if problem:
            return problem
    return None


def settings_problem(settings: Any, where: str = "settings") -> str | None:
    """The first float field of a settings dataclass (nested ones too) that is NaN or
    infinite, or None: a comparison such as `lr > 0` lets NaN through, so a range check
    alone would take it."""
    if not dataclasses.is_dataclass(settings):
        return None
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            return f"{where}.{field.name} must be a finite number, got {value}"
        if problem := settings_problem(value, f"{where}.{field.name}"):
            return problem
    return None


def size_problem(value: Any, where: str, low: int, high: int | None = None) -> str | None:
    """What keeps `value` from being an integer count in [low, high] (the Python API's
    sizes: `mem_size=20.5` or NaN is no count), or None."""
    import numbers
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return f"{where} must be an integer, got {_shown(value)}"
    if value < low or high is not None and value > high:
        return f"{where} must be {'at least ' + str(low) if high is None else f'in {low}..{high}'}, got {value}"
    return None
