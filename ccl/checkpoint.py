"""A run's state as tensors and plain values (loaded with weights_only=True, so a crafted
checkpoint runs nothing): the generators' states, what Avalanche's metrics carry from one
experience to the next and, inside an experience, what they have summed so far; and the
checks a checkpoint passes before anything acts on it."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ccl.condense import progress_problem
from ccl.errors import CclError
from ccl.fields import classes_problem, soft_targets_problem, tensor_problem
from ccl.io import NUMBER, SERIES_SHAPE, load_torch, series_problem, shape_problem

CHECKPOINT = "checkpoint.pt"


def numpy_rng_state(state: tuple | None = None) -> list:
    """numpy's generator state (`np.random.get_state()`, or `state` taken from it) as
    tensors and plain types, the form `set_rng_state` reads."""
    name, keys, pos, has_gauss, cached = state if state is not None else np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]


def rng_state() -> dict:
    """Every generator's state as tensors and plain types (a checkpoint holds no pickles)."""
    state = {"torch": torch.get_rng_state(), "numpy": numpy_rng_state(), "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["random"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# What Avalanche's metrics carry from one experience to the next: forgetting and BWT keep
# each experience's first and last accuracy; everything else resets at every evaluation.
# Saved as plain values instead of pickling the metric objects (a pickle runs code on load).
_METRIC_STATE = ("train_exp_id", "eval_exp_id")


def metric_states(metrics: list) -> list[dict]:
    states = []
    for metric in metrics:
        state = {name: getattr(metric, name) for name in _METRIC_STATE if hasattr(metric, name)}
        if hasattr(metric, "forgetting"):
            state["initial"] = dict(metric.forgetting.initial)
            state["last"] = dict(metric.forgetting.last)
        states.append(state)
    return states


def restore_metric_states(metrics: list, states: list[dict]) -> None:
    if len(metrics) != len(states):
        raise CclError("the checkpoint's metrics do not match this run's; it cannot be resumed")
    for metric, state in zip(metrics, states):
        for name in _METRIC_STATE:
            if name in state:
                setattr(metric, name, state[name])
        if "initial" in state:
            metric.forgetting.initial = dict(state["initial"])
            metric.forgetting.last = dict(state["last"])


# What Avalanche's training metrics have summed so far in an epoch (its epoch accuracy and
# loss: a running mean, or one per task label), so that a run resumed inside an epoch logs
# that epoch's numbers as an uninterrupted one does.
_RUNNING_MEANS = ("_mean_accuracy", "_mean_loss")


def _mean(metric):
    return getattr(metric, "_mean_accuracy", metric)  # an Accuracy holds a Mean; a loss is one


def _sums(mean) -> list:
    return [value.detach().cpu() if torch.is_tensor(value) else float(value) for value in (mean.summed, mean.weight)]


def running_metric_states(metrics: list) -> list[dict]:
    states = []
    for metric in metrics:
        inner, state = getattr(metric, "_metric", None), {}
        for name in _RUNNING_MEANS:
            means = getattr(inner, name, None)
            if isinstance(means, dict):  # task label -> running mean
                state[name] = {task: _sums(_mean(m)) for task, m in means.items()}
            elif means is not None:
                state[name] = _sums(means)
        states.append(state)
    return states


def restore_running_metric_states(metrics: list, states: list[dict], device: torch.device) -> None:
    """Put back `running_metric_states`; a sum that was a tensor goes back on `device` (the
    training device), where the next minibatch's values are added to it."""
    if len(metrics) != len(states):
        raise CclError("the checkpoint's metrics do not match this run's; it cannot be resumed")
    for metric, state in zip(metrics, states):
        for name, saved in state.items():
            means = getattr(metric._metric, name)
            if isinstance(means, dict):
                means.clear()
                for task, sums in saved.items():
                    mean = _mean(means[task])  # a defaultdict: creates the task's entry
                    mean.summed, mean.weight = (x.to(device) if torch.is_tensor(x) else x for x in sums)
            else:
                means.summed, means.weight = (x.to(device) if torch.is_tensor(x) else x for x in saved)


def _sums_problem(value) -> bool:
    return not (isinstance(value, list) and len(value) == 2
                and all(isinstance(x, float) or torch.is_tensor(x) and x.dim() == 0 for x in value))


def _running_metrics_problem(states) -> str | None:
    if not isinstance(states, list) or not all(isinstance(s, dict) and set(s) <= set(_RUNNING_MEANS)
                                               for s in states):
        return "position.running_metrics should be a list of running means"
    for s in states:
        for means in s.values():
            if isinstance(means, dict) and any(type(t) is not int or _sums_problem(v) for t, v in means.items()) \
                    or not isinstance(means, dict) and _sums_problem(means):
                return "position.running_metrics should hold (sum, weight) pairs"
    return None


def _rng_problem(state) -> str | None:
    """Why `state` cannot be restored as the generators' state, or None (tried on them, then
    theirs put back: exactly what `set_rng_state` accepts)."""
    saved = rng_state()
    try:
        set_rng_state(state)
    except Exception as e:  # torch, numpy and random each raise their own kinds
        return f"rng is not a generator state ({type(e).__name__})"
    finally:
        set_rng_state(saved)
    return None


def _weights_problem(weights, model: torch.nn.Module) -> str | None:
    expected = model.state_dict()
    if not isinstance(weights, dict) or set(weights) != set(expected):
        return "model holds other weights than this run's learner"
    for name, tensor in expected.items():
        if not torch.is_tensor(weights[name]) or weights[name].shape != tensor.shape:
            return f"model.{name} should be a tensor of shape {tuple(tensor.shape)}"
    return None


def _optimizer_problem(state, model: torch.nn.Module) -> str | None:
    shapes = [p.shape for p in model.parameters()]
    if not (isinstance(state, dict) and isinstance(state.get("state"), dict)
            and isinstance(state.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in state["param_groups"])
            and sorted(i for g in state["param_groups"] for i in g["params"]) == list(range(len(shapes)))):
        return "optimizer is not the state of this run's optimizer"
    for i, param_state in state["state"].items():
        buffer = param_state.get("momentum_buffer") if isinstance(param_state, dict) else 0
        if type(i) is not int or not 0 <= i < len(shapes) or \
                not (buffer is None or torch.is_tensor(buffer) and buffer.shape == shapes[i]):
            return f"optimizer.state[{i}] does not fit this run's learner"
    return None


_METRIC_SHAPES = {"train_exp_id": (int, type(None)), "eval_exp_id": (int, type(None)), "initial": dict, "last": dict}


def _metrics_problem(states) -> str | None:
    if not isinstance(states, list) or not all(isinstance(s, dict) for s in states):
        return "metric_states should be a list of objects"
    for s in states:
        for key, value in s.items():
            if key not in _METRIC_SHAPES or isinstance(value, bool) or not isinstance(value, _METRIC_SHAPES[key]):
                return f"metric_states holds {key!r} = {str(value)[:40]}"
            if isinstance(value, dict) and not all(type(k) is int and isinstance(v, NUMBER) for k, v in value.items()):
                return f"metric_states' {key} should map experiences to accuracies"
    return None


@dataclass(frozen=True)
class RunShape:
    """What a checkpoint of a run must agree with."""
    steps: int                      # experiences trained one after another (1 for joint)
    experiences: int                # experiences evaluated after each step
    class_order: list[int]
    image_shape: tuple[int, ...]    # (C, H, W)
    num_classes: int
    mem_size: int
    epochs: int = 1                 # per experience
    # the classes of each step, in the order they arrive (None: not checked)
    experience_classes: list[list[int]] | None = None
    # the memory's condensation: the name of its loop and its most iterations (None: none)
    condensation: tuple[str, int] | None = None


def _memory_problem(state, run: RunShape, done: int, within: bool) -> str | None:
    """What in a memory's checkpoint state (images, labels, classes, the per-row fields)
    does not fit the run after `done` steps (and inside the next one, `within`)."""
    if state is None:
        return None  # a run without a memory; one with a memory refuses None when restoring
    if not isinstance(state, dict) or not all(k in state for k in ("images", "labels", "classes")):
        return "memory should hold images, labels and classes"
    images, labels, classes = state["images"], state["labels"], state["classes"]
    if not (torch.is_tensor(labels) and labels.dim() == 1 and not labels.is_floating_point()
            and len(labels) <= run.mem_size and (not len(labels) or 0 <= labels.min() <= labels.max() < run.num_classes)):
        return f"memory labels should be at most {run.mem_size} class indices below {run.num_classes}"
    if not torch.is_tensor(images) or len(labels) and tuple(images.shape) != (len(labels), *run.image_shape):
        return f"memory images should be a ({len(labels)}, {', '.join(map(str, run.image_shape))}) tensor"
    if not (isinstance(classes, list) and all(type(c) is int and 0 <= c < run.num_classes for c in classes)):
        return "memory classes should be class indices"
    groups = run.experience_classes
    arriving = set(groups[done + 1]) if groups is not None and within else set()
    seen = {c for g in groups[:done + 1] for c in g} | arriving if groups is not None else None
    if problem := classes_problem(classes, labels.tolist(), seen, arriving, "memory classes"):
        return problem
    if "soft_targets" in state and (problem := soft_targets_problem(state["soft_targets"], len(labels),
                                                                     run.num_classes, "memory.soft_targets")):
        return problem
    logits = state.get("logits")
    if torch.is_tensor(logits) and logits.numel() and (problem := tensor_problem(logits, "memory.logits",
                                                                                 finite=True)):
        return problem
    return _in_flight_problem(state, run)


def _in_flight_problem(state: dict, run: RunShape) -> str | None:
    """What in a memory's state inside an experience (its stream slots' reservoir, the
    learner's trajectory recorded so far) does not fit the run."""
    reservoir = state.get("stream_reservoir")
    if reservoir is not None:
        budget = reservoir.get("budget") if isinstance(reservoir, dict) else None
        if not (isinstance(budget, list) and budget and all(
                isinstance(b, list) and len(b) == 2 and all(type(x) is int for x in b)
                and 0 <= b[0] < run.num_classes and 1 <= b[1] <= run.mem_size for b in budget)):
            return "memory.stream_reservoir.budget should be [class, slots] pairs"
        seen, offset = reservoir.get("seen"), reservoir.get("offset")
        if not (type(offset) is int and 0 <= offset and offset + sum(n for _, n in budget) == len(state["labels"])):
            return "memory.stream_reservoir should end where the memory's rows end"
        if not (type(reservoir.get("offered")) is int and torch.is_tensor(seen) and seen.shape == (len(budget),)
                and not seen.is_floating_point() and bool((seen >= 0).all())):
            return "memory.stream_reservoir should count the samples offered to each class"
    trajectory = state.get("trajectory")
    if trajectory is not None:
        snapshots = trajectory.get("snapshots") if isinstance(trajectory, dict) else None
        if not (isinstance(snapshots, list) and all(torch.is_tensor(t) and t.dim() == 1 for t in snapshots)
                and len({t.numel() for t in snapshots}) <= 1 and type(trajectory.get("steps")) is int
                and isinstance(trajectory.get("epoch_step"), NUMBER)):
            return "memory.trajectory should hold flat parameter snapshots, a step count and an epoch step"
    return None


def _strategy_problem(state) -> str | None:
    """A strategy's state (BiC's bias layer) is plain numbers and lists of class indices."""
    if state is None or isinstance(state, dict) and all(
            type(k) is str and (isinstance(v, float) or isinstance(v, list) and all(type(c) is int for c in v))
            for k, v in state.items()):
        return None
    return "strategy should hold numbers and class indices"


PHASES = ("training", "condensing")  # where inside an experience a checkpoint was taken
CLOCK_COUNTERS = ("train_iterations", "train_exp_counter", "train_exp_epochs", "train_exp_iterations",
                  "train_epoch_iterations", "total_iterations")  # Avalanche's Clock, saved inside an experience


def _position_problem(ckpt: dict, model: torch.nn.Module, run: RunShape) -> str | None:
    """What in a checkpoint taken inside an experience (`position`) does not fit the run:
    the epoch and iteration it stopped at, the learner's weights at the experience's
    start, the generators' states before each minibatch fetch that drew from them, the
    clock, the running metrics and, inside a condensation, its saved progress."""
    position = ckpt["position"]
    if not isinstance(position, dict) or position.get("phase") not in PHASES:
        return f"position should be a dictionary with a phase in {', '.join(PHASES)}"
    epoch, iteration = position.get("epoch"), position.get("iteration")
    epochs = range(run.epochs) if position["phase"] == "training" else [run.epochs]  # condensing: all done
    if not (type(epoch) is int and epoch in epochs and type(iteration) is int and iteration >= 0):
        return (f"position's epoch should be {'in 0..' if len(epochs) > 1 else ''}{epochs[-1]} "
                f"and its iteration a count")
    if not isinstance(position.get("saved"), NUMBER):
        return "position.saved should be a time"
    clock = position.get("clock")
    if not (isinstance(clock, dict) and set(clock) == set(CLOCK_COUNTERS)
            and all(type(v) is int and v >= 0 for v in clock.values())):
        return "position.clock should map Avalanche's counters to counts"
    fetches = position.get("fetch_rng", {})
    if not (isinstance(fetches, dict) and all(type(k) is int and k >= 0 for k in fetches)):
        return "position.fetch_rng should map minibatch indices to generator states"
    for state in fetches.values():
        if problem := _rng_problem(state):
            return f"position.fetch_rng: {problem}"
    condensation = position.get("condensation")
    if position["phase"] == "condensing":
        if run.condensation is None:
            return "position: it stopped inside a condensation, and this run's memory condenses nothing"
        images = condensation.get("images") if isinstance(condensation, dict) else None
        if not (torch.is_tensor(images) and images.dim() == 4 and len(images) <= run.mem_size
                and tuple(images.shape[1:]) == run.image_shape):
            return (f"position.condensation.images should be at most {run.mem_size} images of shape "
                    f"{run.image_shape}")
        loop, iterations = run.condensation
        if problem := progress_problem(condensation, loop, None, iterations):  # the images' count: the method's
            return f"position.condensation: {problem}"
        if problem := _rng_problem(condensation.get("rng")):
            return f"position.condensation: {problem}"
    return (_weights_problem(ckpt.get("experience_start_model"), model)
            or _running_metrics_problem(position.get("running_metrics")))


def checkpoint_problem(ckpt, model: torch.nn.Module, run: RunShape) -> str | None:
    """What makes `ckpt` not a checkpoint of this run, or None: its experience index within
    the steps the run trains (-1 inside the first), its results' rows one per step done,
    its weights and momentum of the learner's shapes, its memory of the data's shapes and
    classes, its generator states restorable; inside an experience, its `position` too."""
    if not isinstance(ckpt, dict):
        return "not a checkpoint (no dictionary)"
    missing = [k for k in ("experience", "model", "optimizer", "metric_states", "results", "rng") if k not in ckpt]
    if missing:
        return f"{missing[0]} is missing"
    done, within = ckpt["experience"], "position" in ckpt
    last = run.steps - 1 - within  # inside an experience: the last done is before it
    if type(done) is not int or not -within <= done <= last:
        inside = " for a checkpoint inside one" if within else ""
        return f"experience should be an index in {-within}..{last}{inside}, not {str(done)[:40]}"
    if ckpt.get("class_order", run.class_order) != run.class_order:
        return "its class order is not this run's"
    results = ckpt["results"]
    return (shape_problem(results, SERIES_SHAPE, "results") or series_problem(results, done + 1, run.experiences)
            or _weights_problem(ckpt["model"], model) or _optimizer_problem(ckpt["optimizer"], model)
            or _memory_problem(ckpt.get("memory"), run, done, within) or _metrics_problem(ckpt["metric_states"])
            or _rng_problem(ckpt["rng"]) or _strategy_problem(ckpt.get("strategy"))
            or (_position_problem(ckpt, model, run) if within else None))


def load_checkpoint(path: Path, model: torch.nn.Module, run: RunShape) -> dict:
    """A checkpoint written by `train_and_evaluate` (tensors and plain types only) for
    `model` in `run`, checked whole by `checkpoint_problem`; else a CclError naming the
    file. Checkpoints of ccl before 2026-11-30 pickled Avalanche objects and are refused."""
    what = "checkpoint (delete it to restart the run from the beginning)"
    ckpt = load_torch(path, what)
    problem = checkpoint_problem(ckpt, model, run)
    if problem:
        raise CclError(f"{path}: not what ccl wrote there ({problem}); delete it to restart the run "
                       "from the beginning")
    return ckpt
