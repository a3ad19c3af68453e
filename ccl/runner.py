"""One experiment, top to bottom: build the benchmark, learner, memory and plugins from a
prepared configuration (`ccl.experiment`), then train experience by experience,
evaluating and checkpointing after each (and inside each, every `checkpoint_every`
seconds: `ccl.resume`), into a run folder written atomically.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccl import config as cfgmod
from ccl.assembly import build_replay, check_plugin_order
from ccl.checkpoint import (CHECKPOINT, RunShape, load_checkpoint, metric_states, restore_metric_states, rng_state,
                            set_rng_state)
from ccl.condense import dsa
from ccl.data.augment import crop_flip
from ccl.errors import CclError
from ccl.estimate import plan_run
from ccl.experiment import MEM_DTYPES, Prepared, RunConfig, new_run_dir, prepare, resolved_config
from ccl.io import folder_lock, refuse_links, remove_stale_temporaries, save_torch, write_json
from ccl.logs import (ACC_EPOCH, ACC_EXP, ACC_STREAM, BWT, CSV_LOGS, FORGETTING, Progress, carry_csv_rows,
                      check_csv_logs, csv_logger, csv_metrics, csv_rows, optional_loggers)
from ccl.models import build_learner
from ccl.resume import CheckpointClock, CheckpointsWithin, CondensationCheckpoint
from ccl.strategies import FinetunePlugin
from ccl.guards import Diverged, DivergenceGuard, signals_deferred, signals_raise_interrupted, stop_if_requested
from ccl.training import seed_everything


def peak_ram_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _avalanche_dataset(x: torch.Tensor, y: torch.Tensor):
    from avalanche.benchmarks.utils.classification_dataset import \
        _make_taskaware_tensor_classification_dataset as tensor_dataset
    return tensor_dataset(x, y, targets=y, task_labels=0)


def _new_learner(p: Prepared) -> torch.nn.Module:
    cfg = p.config
    return build_learner(cfg.model, p.data.num_classes, p.data.shape, cfg.width, cfg.depth, cfg.norm)


def _refuse_linked_logs(run_dir: Path) -> None:
    refuse_links(run_dir / "logs", *(run_dir / "logs" / name for name in CSV_LOGS))  # Avalanche opens them "w"


def _load_checkpoint(p: Prepared, run_dir: Path, model: torch.nn.Module) -> dict:
    """The run's checkpoint, checked against this run: its learner, stream and class order,
    and the loop its memory condenses with (its name and its most iterations)."""
    n = len(p.experience_classes)
    epochs, _ = p.learner_training()  # a position inside an experience counts the strategy's own (GDumb's)
    groups = [list(p.order)] if p.spec.joint else p.experience_classes
    loop = (p.settings.loop, p.settings.iterations) if hasattr(p.settings, "loop") else None  # a condensing memory
    run = RunShape(1 if p.spec.joint else n, n, p.order, tuple(p.data.shape), p.data.num_classes, p.config.mem_size,
                   epochs, groups, loop)
    return load_checkpoint(run_dir / CHECKPOINT, model, run)


def _build(p: Prepared, run_dir: Path, progress: bool, clock: CheckpointClock | None = None, save_within=None):
    """The Avalanche benchmark, strategy and plugins (`ccl.assembly.ReplayParts`, in its
    PLUGIN_ORDER) of a prepared run. Its checkpoints part saves checkpoints inside an
    experience when `clock` says (by `save_within`; default: never) and resumes one
    (`CheckpointsWithin`)."""
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
    from avalanche.training import JointTraining, Naive
    from avalanche.training.plugins import EvaluationPlugin

    from ccl.memory.codec import MemoryCodec

    cfg, data = p.config, p.data
    train_x, train_y = data.normalise(data.train_x), torch.from_numpy(data.train_y)  # (N, C, H, W)
    test_x, test_y = data.normalise(data.test_x), torch.from_numpy(data.test_y)
    bench = class_incremental_benchmark(
        {"train": _avalanche_dataset(train_x, train_y), "test": _avalanche_dataset(test_x, test_y)},
        class_order=p.order, num_classes_per_exp=[len(g) for g in p.experience_classes])

    # On the device from the start: a resumed optimizer's momentum is loaded onto the
    # parameters' device, and Avalanche would move only the parameters later.
    model = _new_learner(p).to(p.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True),
        bwt_metrics(experience=True, stream=True),
        *csv_metrics(),
        loggers=[csv_logger(run_dir / "logs"), *optional_loggers(cfg, run_dir)])

    black = (-torch.tensor(data.mean) / torch.tensor(data.std)).to(p.device)  # (C,) crop-flip's padding, normalised
    augments = {"none": None, "dsa": dsa.augmenter(dsa.DSASettings()),
                "crop-flip": functools.partial(crop_flip, fill=black)}

    def real_images(classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.isin(train_y, torch.tensor(classes))
        return train_x[mask], train_y[mask]
    clock = clock or CheckpointClock()
    condensation = CondensationCheckpoint(clock) if p.spec.method is not None else None
    parts = build_replay(spec=p.spec, settings=p.settings, filler_settings=p.filler_settings, strategy=p.strategy,
                         strategy_settings=p.strategy_settings,
                         mem_size=cfg.mem_size, mem_batch=cfg.mem_batch, device=p.device, learner=model,
                         real_images=real_images, codec=MemoryCodec(MEM_DTYPES[cfg.mem_dtype], data.mean, data.std),
                         augment=augments[cfg.mem_augment], stream_augment=augments[cfg.stream_augment],
                         schedule=p.experience_classes, stream_slots=cfg.stream_slots, batch_size=cfg.batch_size,
                         progress=progress, checkpoint=condensation, guard=DivergenceGuard(),
                         boundaries=not cfg.online or cfg.reveal_boundaries)
    memory = parts.memory
    parts = parts.with_parts(
        checkpoints=CheckpointsWithin(clock, save_within or (lambda state: None), memory, parts.loss, condensation),
        progress=Progress(progress, cfg.memory, plan_run(p, bench, memory)),
        finetune=FinetunePlugin(memory, cfg.finetune_epochs, cfg.lr, cfg.momentum, cfg.weight_decay,
                                cfg.batch_size) if cfg.finetune_epochs else None)
    # Online (cfg.online): the scenario's experiences, each trained for one epoch (epochs is
    # 1) in minibatches of the online size, not Avalanche's `split_online_stream` of one
    # experience a minibatch, whose per-experience set-up would run at every step; the
    # boundaries are hidden from the memory by `make_plugin` (ccl.memory.online).
    strategy_cls = JointTraining if p.spec.joint else Naive
    strategy = strategy_cls(model=model, optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(),
                            train_mb_size=cfg.batch_size, train_epochs=cfg.epochs, eval_mb_size=512,
                            device=p.device, plugins=parts.plugins(), evaluator=evaluator)
    check_plugin_order(strategy.plugins, parts)
    return bench, strategy, parts


RESULT_SERIES = ("accuracy_matrix", "seen_accuracy", "average_accuracy", "forgetting", "bwt", "train_seconds",
                 "memory_update_seconds", "eval_seconds", "memory_updates", "memory_accuracy", "memory_fit_accuracy")


def _memory_accuracy(model: torch.nn.Module, memory) -> float | None:
    """The learner's accuracy on the memory's images as stored (eval mode, no
    augmentation): how far it fits what it replays (near 1: it has overfit its buffer)."""
    if not hasattr(memory, "codec") or not len(memory.labels):
        return None
    from ccl.memory.fillers import learner_features
    with torch.no_grad():
        logits = learner_features(model, memory.codec.decode(memory.images), logits=True)
    return float((logits.argmax(1) == memory.labels).float().mean())


def _memory_fit_accuracy(p: Prepared, train_metrics: dict) -> float | None:
    """Under a strategy that trains a fresh learner on the memory alone (GDumb): its
    training accuracy over its last epoch there, as it trained (augmented, in train mode):
    near 1 when it has converged. None for a strategy that trains on the stream."""
    if not p.strategy.memory_alone or ACC_EPOCH not in train_metrics:
        return None
    return float(train_metrics[ACC_EPOCH])


def train_and_evaluate(p: Prepared, run_dir: Path, progress: bool = True, on_experience=None,
                       resume: bool = False,
                       checkpoint_clock: CheckpointClock | None = None) -> tuple[dict[str, Any], dict | None]:
    """Train on the stream (or all at once for `joint`), evaluating after every experience
    and checkpointing after each one into `run_dir`, and inside one every
    `checkpoint_every` seconds.

    Args:
        on_experience: optional callback(i, results so far) after experience i.
        resume: continue from `run_dir`'s checkpoint, if it has one.
        checkpoint_clock: when to checkpoint inside an experience (default: every
            `checkpoint_every` seconds of the run's settings).

    Returns:
        The results and the final memory state (None without a memory).
    """
    seed_everything(p.config.seed)
    _refuse_linked_logs(run_dir)
    earlier_rows = csv_rows(run_dir / "logs") if resume else None
    clock = checkpoint_clock or CheckpointClock(p.config.checkpoint_every)

    def save_within(state: dict) -> None:  # inside experience i, with the results of those before it
        with signals_deferred():  # a Ctrl-C now waits until the checkpoint is whole
            save_torch(run_dir / CHECKPOINT, {"experience": i - 1, "results": results, "class_order": p.order,
                                              **state})

    bench, strategy, parts = _build(p, run_dir, progress, clock, save_within)
    memory, within = parts.memory, parts.checkpoints
    n = len(p.experience_classes)
    steps = [bench.train_stream] if p.spec.joint else list(bench.train_stream)
    results: dict[str, Any] = {key: [] for key in RESULT_SERIES}
    first, epochs_done = 0, 0
    if resume and (run_dir / CHECKPOINT).exists():
        ckpt = _load_checkpoint(p, run_dir, strategy.model)
        position = ckpt.get("position")
        # Inside an experience: from its start's weights, which plugins copy as it starts
        # (a teacher, a trajectory's first snapshot); `within` loads the later ones.
        strategy.model.load_state_dict(ckpt["experience_start_model"] if position else ckpt["model"])
        strategy.optimizer.load_state_dict(ckpt["optimizer"])
        # Avalanche resets the optimizer (momentum included) on its first train() call,
        # recognised by optimized_param_id being None; after the first experience it keeps
        # the state. Marking the parameters as already optimised keeps the loaded momentum.
        strategy.optimized_param_id = dict(strategy.model.named_parameters())
        restore_metric_states(strategy.evaluator.metrics, ckpt["metric_states"])
        for plugin, what in ((memory, "memory"), (within.strategy_plugin, "strategy")):
            if plugin is None or not hasattr(plugin, "restore") or (what == "strategy" and ckpt.get(what) is None):
                continue  # a strategy that carries nothing between experiences; one of an older ccl
            try:
                plugin.restore(ckpt[what])
            except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
                raise CclError(f"{run_dir / CHECKPOINT}: not what ccl wrote there (its {what} cannot be "
                               f"restored: {type(e).__name__})") from None
        results, first = ckpt["results"], ckpt["experience"] + 1
        set_rng_state(ckpt["rng"])  # last: building the strategy above drew from the generators
        if position:
            within.resume_from(ckpt)
            epochs_done = position["epoch"]
    if earlier_rows is not None:
        carry_csv_rows(strategy.evaluator.loggers[0], earlier_rows, first, run_dir / "logs", epochs_done)
    if p.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(p.device)
    for i in range(first, len(steps)):
        start = time.perf_counter()
        train_metrics = strategy.train(steps[i])
        elapsed = time.perf_counter() - start + within.take_seconds_before()
        update = memory.update_log[-1] if memory and memory.update_log else {"seconds": 0.0}
        start = time.perf_counter()
        metrics = strategy.eval(bench.test_stream)
        row = [float(metrics[ACC_EXP.format(j)]) for j in range(n)]
        seen = n if p.spec.joint else i + 1
        for key, value in (("accuracy_matrix", row), ("seen_accuracy", float(np.mean(row[:seen]))),
                           ("average_accuracy", float(metrics[ACC_STREAM])),
                           ("forgetting", float(metrics.get(FORGETTING, 0.0))),
                           ("bwt", float(metrics.get(BWT, 0.0))),
                           ("train_seconds", elapsed - update["seconds"]),
                           ("memory_update_seconds", update["seconds"]),
                           ("eval_seconds", time.perf_counter() - start), ("memory_updates", update),
                           ("memory_accuracy", _memory_accuracy(strategy.model, memory)),
                           ("memory_fit_accuracy", _memory_fit_accuracy(p, train_metrics))):
            results.setdefault(key, []).append(value)  # a checkpoint of an older ccl may lack a series
        with signals_deferred():  # a Ctrl-C now waits until the checkpoint is whole
            save_torch(run_dir / CHECKPOINT, {
                "experience": i, "model": strategy.model.state_dict(), "optimizer": strategy.optimizer.state_dict(),
                "metric_states": metric_states(strategy.evaluator.metrics), "memory": memory.checkpoint() if memory else None,
                "results": results, "rng": rng_state(), "class_order": p.order, "strategy": within.strategy_state()})
        clock.restart()
        if on_experience:
            on_experience(i, results)
        stop_if_requested()  # a signal during the evaluation or a memory update without iterations
    results = dict(results)
    results["final_average_accuracy"] = results["average_accuracy"][-1]
    results["average_forgetting"] = results["forgetting"][-1]
    results["final_bwt"] = results["bwt"][-1]
    results["peak_ram_mib"] = peak_ram_mib()
    results["peak_gpu_mib"] = (torch.cuda.max_memory_allocated(p.device) / 2**20
                               if p.device.type == "cuda" else None)
    mem_state = memory.state() if memory else None
    results["memory_size"] = memory_size(mem_state)
    return results, mem_state


def memory_size(state: dict | None) -> dict:
    """What the final memory holds: its rows, its images' dtype, and its bytes, every per-row
    field at its stored dtype (images, and soft targets and DER's logits where it keeps
    them), so that memories compare at equal bytes. Soft targets count for the rows that
    have one (a NaN row is a real image, which needs none); labels, one class index a row
    in every memory alike, are left out as papers' budgets leave them out."""
    if state is None:
        return {"images": 0, "dtype": None, "bytes": 0, "bytes_by_field": {}}
    by_field = {"images": state["images"].numel() * state["images"].element_size()}
    soft = state.get("soft_targets")
    if soft is not None and len(soft):
        has_one = ~soft.isnan().all(dim=1)  # (N,) rows with a soft target
        by_field["soft_targets"] = int(has_one.sum()) * soft.shape[1] * soft.element_size()
    logits = state.get("logits")
    if logits is not None and len(logits):
        by_field["logits"] = logits.numel() * logits.element_size()
    by_field = {k: int(v) for k, v in by_field.items()}
    return {"images": int(len(state["labels"])), "dtype": str(state["images"].dtype).replace("torch.", ""),
            "bytes": sum(by_field.values()), "bytes_by_field": by_field}


def status(run_dir: Path) -> dict:
    from ccl.io import STATUS_SHAPE, read_json
    return read_json(Path(run_dir) / "status.json", STATUS_SHAPE)


def _finished(run_dir: Path) -> bool:
    try:
        return status(run_dir).get("status") == "finished"
    except CclError:
        return False


def _set_status(run_dir: Path, state: str, **extra) -> None:
    write_json(run_dir / "status.json", {"status": state, "pid": os.getpid(),
                                         "updated": dt.datetime.now().isoformat(timespec="seconds"), **extra})


def run(p: Prepared, runs_dir: Path = Path("runs"), progress: bool = True, run_dir: Path | None = None,
        on_experience=None, checkpoint_clock: CheckpointClock | None = None) -> Path:
    """Run a prepared experiment into a new folder under `runs_dir` (or `run_dir`, which must
    not exist yet, or be empty); returns the folder. `resume_run` continues one.
    `checkpoint_clock`: see `train_and_evaluate`."""
    # The handlers go in before the folder is made: a signal from here on leaves a folder
    # with its configuration and the status `interrupted`, never one without a status.
    with signals_raise_interrupted():
        if run_dir is None:
            run_dir = new_run_dir(runs_dir, p.config)
        with folder_lock(run_dir, "a run"):
            write_json(run_dir / "config.json", resolved_config(p))
            return _run_locked(p, run_dir, progress, on_experience, resume=False, checkpoint_clock=checkpoint_clock)


def _run_locked(p: Prepared, run_dir: Path, progress: bool, on_experience, resume: bool,
                checkpoint_clock: CheckpointClock | None = None) -> Path:
    _set_status(run_dir, "running")
    start = time.perf_counter()
    try:
        with signals_raise_interrupted():
            stop_if_requested()  # a signal while the folder was being made: stop before any training
            results, mem_state = train_and_evaluate(p, run_dir, progress, on_experience, resume, checkpoint_clock)
            results = {"scenario": p.config.scenario, "memory": p.config.memory, "seed": p.config.seed,
                       "class_order": p.order, "experience_classes": p.experience_classes,
                       **results, "total_seconds": time.perf_counter() - start}
            with signals_deferred():
                if mem_state is not None:
                    save_torch(run_dir / "memory.pt", {
                        **{k: v.cpu() if torch.is_tensor(v) else v for k, v in mem_state.items()},
                        "mean": p.data.mean, "std": p.data.std, "class_names": p.data.classes,
                        "dtype": p.config.mem_dtype})
                write_json(run_dir / "results.json", results)
                _set_status(run_dir, "finished")
    except KeyboardInterrupt as e:
        e.run_dir = run_dir  # so the caller can say what to resume
        e.finished = _finished(run_dir)  # a signal during the final write: the run is whole
        if not e.finished:
            _set_status(run_dir, "interrupted", signal=str(e) or "SIGINT")
        raise
    except Diverged as e:
        _set_status(run_dir, "diverged", error=str(e))
        raise
    except BaseException as e:
        try:
            _set_status(run_dir, "failed", error=f"{type(e).__name__}: {e}")
        except OSError:
            pass  # e.g. the disk is full: the status cannot be written either; report the cause
        raise
    return run_dir


def resume_run(run_dir: Path, progress: bool = True, on_experience=None, on_start=None,
               checkpoint_clock: CheckpointClock | None = None) -> tuple[Path, bool]:
    """Continue an interrupted run; returns (folder, whether anything was left to do).
    `on_start(run_dir, first, total, position)` is told where it resumes, before any
    training: at experience `first`, and inside it at `position` (the checkpoint's: its
    phase, epoch, iteration, the time it was saved) or from its start (None)."""
    from ccl.io import CONFIG_SHAPE, read_json, read_results
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise CclError(f"{run_dir}: not a run folder (no config.json)")
    if (run_dir / "results.json").exists() and status(run_dir).get("status") == "finished":
        read_results(run_dir / "results.json")  # a corrupt results file is an error, not "finished"
        with folder_lock(run_dir, "a run"):  # a memory picture's draw killed -9 left its temporary
            remove_stale_temporaries(run_dir)
        return run_dir, False
    config = read_json(run_dir / "config.json", CONFIG_SHAPE)
    try:
        cfg = cfgmod.from_dict(RunConfig, config["run"], f"{run_dir / 'config.json'}: run")
    except (KeyError, TypeError):
        raise CclError(f"{run_dir / 'config.json'}: not a ccl run configuration") from None
    if isinstance(config.get("memory_settings"), dict):
        # The settings that ran, not what the preset file says today.
        cfg = dataclasses.replace(cfg, memory_config=None, memory_settings=config["memory_settings"])
    if isinstance(config.get("strategy_settings"), dict):
        cfg = dataclasses.replace(cfg, strategy_settings=config["strategy_settings"])
    p = prepare(cfg)
    if p.order != config.get("class_order"):
        raise CclError(f"{run_dir}: the data set's classes changed since the run started")
    recorded = (config.get("data") or {}).get("fingerprint")
    if recorded is not None and recorded != p.data.fingerprint():
        raise CclError(f"{run_dir}: the data changed since the run started (images, labels or per-class "
                       "counts differ); resuming would mix two data sets, so start a new run")
    with folder_lock(run_dir, "a run"):  # before any clean-up: a second resume touches nothing
        remove_stale_temporaries(run_dir)  # a write cut short by kill -9 (ccl.io writes atomically)
        first, position = 0, None
        if (run_dir / CHECKPOINT).exists():  # checked whole now, while the folder is as it was
            with torch.device("meta"):  # the learner's shapes, without allocating it
                ckpt = _load_checkpoint(p, run_dir, _new_learner(p))
            first, position = ckpt["experience"] + 1, ckpt.get("position")
        _refuse_linked_logs(run_dir)
        check_csv_logs(run_dir / "logs")
        if on_start:  # the load also fails early, before anything is overwritten
            on_start(run_dir, first, len(p.experience_classes), position)
        return _run_locked(p, run_dir, progress, on_experience, resume=True, checkpoint_clock=checkpoint_clock), True
