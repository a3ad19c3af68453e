"""One experiment: a scenario, a learner, a replay memory, Avalanche metrics, a run folder.

`prepare` checks everything that can be wrong with the input and loads the data before
any folder exists, so bad input leaves nothing behind; `run` trains experience by
experience and writes results atomically.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import importlib
import os
import platform
import random
import resource
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccl import config as cfgmod
from ccl.condense import dsa
from ccl.condense.methods import method_settings
from ccl.data import ImageSet, load_dataset
from ccl.data.augment import crop_flip
from ccl.data.scenarios import Scenario, class_order, get_scenario, split_classes
from ccl.errors import CclError
from ccl.io import folder_lock, load_torch, save_torch, write_json
from ccl.memory import MEMORIES, MemorySpec
from ccl.models import LEARNERS, NORMS, build_learner
from ccl.strategies import STRATEGIES
from ccl.training import pick_device, reinitialise, seed_everything, sgd_epoch


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run; written to config.json fully resolved."""
    scenario: str = "split-digits"
    memory: str = "random"
    strategy: str = "er"           # how memory samples are used: er | er-ace | der | der++ | icarl | gdumb
    mem_size: int = 200            # images in memory, all classes together
    mem_batch: int = 32            # memory samples appended to every minibatch
    mem_dtype: str = "float32"     # how memory images are stored: float32 | float16 | uint8
    # none | dsa: a fresh DSA draw on memory images each time they are trained on; auto (the
    # default) is dsa for the on-device memories (it lifted every memory, condensed ones
    # most: docs/results.md) and none for the others, resolved by make_config.
    mem_augment: str = "auto"
    # replay: while an experience streams, its new classes' slots hold a class-balanced
    # reservoir of their samples (DeviceMemoryPlugin); off: they enter memory at its end.
    # None: the strategy's own choice (on for er-ace), resolved by make_config.
    stream_slots: bool | None = None
    # none | crop-flip: the stream samples' augmentation (crop-flip: padding 4 and a random
    # horizontal flip, the field's CIFAR default); memory samples follow mem_augment.
    stream_augment: str = "none"
    seed: int = 0
    epochs: int = 5                # per experience
    batch_size: int = 32           # current-experience samples per minibatch
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    model: str = "convnet"
    width: int = 128
    depth: int = 3
    norm: str = "instance"
    device: str = "auto"           # auto = cuda when available
    data_dir: str | None = None    # default: $CCL_DATA_DIR, else the user cache folder
    download: bool = True          # allow torchvision to download when no local copy exists
    experiences: int | None = None  # default: the scenario's
    class_order: list[int] | None = None  # default: a permutation drawn from the seed
    train_per_class: int | None = None    # keep the first N training images of each class
    test_per_class: int | None = None     # test on the first N test images of each class (quick runs)
    protocol: str = "replay"       # replay: new data + memory; gdumb: a fresh learner on the memory alone
    finetune_epochs: int = 0       # replay: then this many epochs on the memory alone at lr / 10 (EEIL)
    tensorboard: str | None = None  # also log to TensorBoard in this folder
    wandb: str | None = None        # also log to this Weights & Biases project
    memory_config: str | None = None      # preset name in configs/ or a TOML file
    memory_settings: dict[str, Any] = field(default_factory=dict)  # overrides of the preset

    def __post_init__(self):
        positive = ["mem_size", "epochs", "batch_size", "width", "depth"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("mem_batch", "seed", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        for name in ("lr",):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}")
        for name in ("momentum", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative")
        if self.experiences is not None and self.experiences < 1:
            raise ValueError(f"--experiences must be at least 1, got {self.experiences}")
        for name in ("train_per_class", "test_per_class"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.mem_batch == 0 and MEMORIES.get(self.memory).value.kind in ("device", "avalanche") \
                and self.protocol == "replay":
            raise ValueError("--mem-batch 0 would fill a memory that is never replayed; use --memory none")
        if self.model not in LEARNERS:
            raise ValueError(f"unknown model {self.model!r}; choose one of: {', '.join(LEARNERS)}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of: {', '.join(NORMS)}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of: {', '.join(PROTOCOLS)}")
        if self.mem_dtype not in MEM_DTYPES:
            raise ValueError(f"unknown mem-dtype {self.mem_dtype!r}; choose one of: {', '.join(MEM_DTYPES)}")
        if self.stream_augment not in STREAM_AUGMENTS:
            raise ValueError(f"unknown stream-augment {self.stream_augment!r}; choose one of: "
                             f"{', '.join(STREAM_AUGMENTS)}")
        if self.mem_augment not in MEM_AUGMENTS:
            raise ValueError(f"unknown mem-augment {self.mem_augment!r}; choose one of: {', '.join(MEM_AUGMENTS)}")


PROTOCOLS = ("replay", "gdumb")
MEM_DTYPES = {"float32": torch.float32, "float16": torch.float16, "uint8": torch.uint8}
MEM_AUGMENTS = ("auto", "none", "dsa", "crop-flip")
STREAM_AUGMENTS = ("none", "crop-flip")


def make_config(**values: Any) -> RunConfig:
    """RunConfig from keyword values over the scenario's defaults over RunConfig's own;
    CclError (not ValueError) for bad values."""
    defaults = get_scenario(values.get("scenario", RunConfig.scenario)).defaults
    cfg = cfgmod.from_dict(RunConfig, {**defaults, **values}, "run")
    if cfg.strategy == "gdumb":  # a strategy name for what the runner does as a protocol
        if cfg.protocol == "replay" and values.get("protocol") == "replay":
            raise CclError("--strategy gdumb trains on the memory alone; it cannot be --protocol replay")
        cfg = dataclasses.replace(cfg, protocol="gdumb")
    elif cfg.protocol == "gdumb" and cfg.strategy != "er":
        raise CclError(f"--protocol gdumb trains a fresh learner on the memory alone: --strategy {cfg.strategy} "
                       "has no stream to replay beside (use --strategy gdumb)")
    if cfg.mem_augment == "auto":
        on_device = MEMORIES.get(cfg.memory).value.kind == "device"
        cfg = dataclasses.replace(cfg, mem_augment="dsa" if on_device else "none")
    if cfg.stream_slots is None:
        spec = MEMORIES.get(cfg.memory).value
        replays = spec.kind == "device" and spec.policy == "end" and cfg.protocol == "replay"
        cfg = dataclasses.replace(cfg, stream_slots=replays and STRATEGIES.get(cfg.strategy).value.stream_slots)
    return cfg


def memory_settings(spec: MemorySpec, cfg: RunConfig) -> Any:
    """The memory method's settings: dataclass defaults <- preset <- overrides <- the
    variant's fixed settings (every memory with settings is a condensation method)."""
    if spec.settings is None:
        if cfg.memory_settings or cfg.memory_config:
            raise CclError(f"memory {cfg.memory!r} takes no settings")
        return None
    return method_settings(cfg.memory, cfg.memory_config, cfg.memory_settings)


@dataclass
class Prepared:
    """A checked configuration with its data loaded: nothing can fail for bad input after this."""
    config: RunConfig
    scenario: Scenario
    spec: MemorySpec
    settings: Any
    data: ImageSet
    device: torch.device
    order: list[int]
    experience_classes: list[list[int]]


def prepare(cfg: RunConfig) -> Prepared:
    scenario = get_scenario(cfg.scenario)
    spec = MEMORIES.get(cfg.memory).value
    settings = memory_settings(spec, cfg)
    device = pick_device(cfg.device)
    for flag, package in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if getattr(cfg, flag):
            try:  # now, not when the logger is built: bad input must leave no run folder
                importlib.import_module(package)
            except ImportError:
                raise CclError(f"--{flag} needs the {package} package: pip install {package}") from None
    # Checks of the settings alone come before the data load, which can take seconds.
    if cfg.mem_dtype != "float32" and spec.kind != "device":
        raise CclError(f"--mem-dtype applies to the on-device memories; memory {cfg.memory!r} stores what "
                       "Avalanche gives it")
    if cfg.mem_augment != "none" and spec.kind != "device":
        raise CclError(f"--mem-augment applies to the on-device memories; memory {cfg.memory!r} has none")
    if cfg.protocol == "gdumb" and spec.kind != "device":
        raise CclError(f"--protocol gdumb trains on the memory alone; memory {cfg.memory!r} has none on the device "
                       "(use random, herding or a condensing memory)")
    STRATEGIES.get(cfg.strategy)  # an unknown name is a one-line error listing the known ones
    if cfg.strategy not in ("er", "gdumb") and (spec.kind != "device" or cfg.protocol != "replay"):
        raise CclError(f"--strategy {cfg.strategy} replays from the on-device memory; memory {cfg.memory!r} under "
                       f"--protocol {cfg.protocol} has none (use random, herding or a condensing memory, replay)")
    if cfg.stream_augment != "none" and cfg.protocol == "gdumb":
        raise CclError("--stream-augment applies to the stream; --protocol gdumb trains on the memory alone "
                       "(its images follow --mem-augment)")
    if cfg.stream_slots and spec.policy == "stream":
        raise CclError(f"--stream-slots: memory {cfg.memory!r} is filled from the stream already")
    if cfg.protocol == "gdumb" and spec.policy == "stream":
        raise CclError(f"--protocol gdumb fills a class-balanced memory at each step; memory {cfg.memory!r} is a "
                       "reservoir over the stream (use random, herding or a condensing memory)")
    if cfg.stream_slots and (spec.kind != "device" or cfg.protocol != "replay"):
        raise CclError(f"--stream-slots fills the on-device memory while replaying; memory {cfg.memory!r} under "
                       f"--protocol {cfg.protocol} has none (use random, herding or a condensing memory, replay)")
    if cfg.finetune_epochs and (spec.kind != "device" or cfg.protocol != "replay"):
        raise CclError(f"--finetune-epochs follows replay with the on-device memory; memory {cfg.memory!r} under "
                       f"--protocol {cfg.protocol} has nothing to finetune on")
    data = load_dataset(scenario.dataset, cfg.data_dir, cfg.download)
    if cfg.train_per_class or cfg.test_per_class:
        data = data.first_per_class(cfg.train_per_class, cfg.test_per_class)
    if (spec.kind == "avalanche" or spec.policy == "end") and cfg.mem_size < data.num_classes:
        raise CclError(f"--mem-size {cfg.mem_size} is smaller than the number of classes "
                       f"({data.num_classes}): every class needs at least one slot")
    order = class_order(data.num_classes, cfg.seed, cfg.class_order)
    groups = split_classes(order, cfg.experiences or scenario.experiences)
    return Prepared(cfg, scenario, spec, settings, data, device, order, groups)


def versions() -> dict[str, str]:
    import avalanche
    import torchvision
    from importlib.metadata import PackageNotFoundError, version
    try:
        ccl_version = version("ccl")
    except PackageNotFoundError:
        ccl_version = "source"
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "avalanche": avalanche.__version__,
            "numpy": np.__version__, "ccl": ccl_version}


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def new_run_dir(runs_dir: Path, cfg: RunConfig) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(runs_dir) / f"{stamp}-{cfg.scenario}-{cfg.memory}-s{cfg.seed}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def resolved_config(p: Prepared) -> dict[str, Any]:
    return {"run": dataclasses.asdict(p.config),
            "memory_settings": cfgmod.to_dict(p.settings),
            "scenario": dataclasses.asdict(p.scenario),
            "class_order": p.order, "experience_classes": p.experience_classes,
            "classes": p.data.classes,
            "data": {"train_images": int(len(p.data.train_y)), "test_images": int(len(p.data.test_y)),
                     "shape": list(p.data.shape), "mean": p.data.mean, "std": p.data.std,
                     "fingerprint": p.data.fingerprint()},
            "device": {"name": str(p.device), "description": device_description(p.device)},
            "versions": versions(), "host": socket.gethostname(), "argv": sys.argv,
            "created": dt.datetime.now().isoformat(timespec="seconds")}


def peak_ram_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _avalanche_dataset(x: torch.Tensor, y: torch.Tensor):
    from avalanche.benchmarks.utils.classification_dataset import \
        _make_taskaware_tensor_classification_dataset as tensor_dataset
    return tensor_dataset(x, y, targets=y, task_labels=0)


class _Progress:
    """Avalanche plugin drawing one tqdm bar per experience with the running loss, and
    one over the test minibatches while evaluating."""

    def __new__(cls, enabled: bool, label: str):
        from avalanche.core import SupervisedPlugin
        from tqdm import tqdm

        class ProgressPlugin(SupervisedPlugin):
            def __init__(self):
                super().__init__()
                self.bar = None

            def before_training_epoch(self, strategy, **kw):
                if self.bar is None:
                    total = strategy.train_epochs * len(strategy.dataloader)
                    exp = strategy.experience.current_experience
                    self.bar = tqdm(total=total, desc=f"{label} exp {exp}", unit="it",
                                    disable=not enabled, leave=False, dynamic_ncols=True)

            def after_training_iteration(self, strategy, **kw):
                self.bar.update(1)
                if self.bar.n % 20 == 0:  # .item() syncs the device: not every step
                    self.bar.set_postfix(loss=f"{strategy.loss.item():.3f}")

            def after_training_exp(self, strategy, **kw):
                self.bar.close()
                self.bar = None

            # Evaluation: one bar over every test experience's minibatches.
            def before_eval(self, strategy, **kw):
                self.eval_bar = tqdm(desc=f"{label} testing", unit="batch", disable=not enabled, leave=False,
                                     dynamic_ncols=True)

            def after_eval_iteration(self, strategy, **kw):
                self.eval_bar.update(1)

            def after_eval(self, strategy, **kw):
                self.eval_bar.close()

        return ProgressPlugin()


ACC_EXP = "Top1_Acc_Exp/eval_phase/test_stream/Exp{:03d}"
ACC_STREAM = "Top1_Acc_Stream/eval_phase/test_stream"
FORGETTING = "StreamForgetting/eval_phase/test_stream"
BWT = "StreamBWT/eval_phase/test_stream"


CSV_LOGS = {"training_results.csv": 0, "eval_results.csv": 1}  # file: column of training_exp


def _csv_rows(folder: Path) -> dict[str, list[str]]:
    """The rows (without header) of an earlier segment's CSV logs, read before Avalanche's
    CSVLogger truncates them on opening."""
    return {n: (folder / n).read_text().splitlines(keepends=True)[1:] if (folder / n).exists() else []
            for n in CSV_LOGS}


def _carry_csv_rows(logger, rows: dict[str, list[str]], first: int) -> None:
    """Put back an interrupted run's CSV rows of the experiences before `first` (the rest
    are logged again as the run repeats them, and would be duplicates)."""
    for handle, (name, column) in zip((logger.training_file, logger.eval_file), CSV_LOGS.items()):
        handle.writelines(r for r in rows[name] if int(r.split(",")[column]) < first)
        handle.flush()


def _optional_loggers(cfg: RunConfig, run_dir: Path) -> list:
    """TensorBoard and Weights & Biases loggers, when asked for (and installed)."""
    loggers = []
    if cfg.tensorboard:
        from avalanche.logging import TensorboardLogger
        loggers.append(TensorboardLogger(tb_log_dir=cfg.tensorboard))
    if cfg.wandb:
        from avalanche.logging import WandBLogger
        loggers.append(WandBLogger(project_name=cfg.wandb, run_name=run_dir.name, dir=str(run_dir)))
    return loggers


def _memory_experience(memory, index: int):
    """The memory's images as an Avalanche experience (GDumb trains on nothing else)."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    images = memory.codec.decode(memory.images).cpu()
    experience = benchmark_from_datasets(train=[_avalanche_dataset(images, memory.labels.cpu())]).train_stream[0]
    experience.current_experience = index  # the stream's step, for logs and progress bars
    return experience


def _finetune_on_memory(model: torch.nn.Module, memory, cfg: RunConfig) -> None:
    """Class-balanced finetuning (EEIL, Castro et al. 2018): after an experience, a few
    epochs on the memory alone, where every seen class has its share of the slots, so
    that the classifier unlearns its bias toward the classes it just saw in bulk."""
    images, labels = memory.codec.decode(memory.images), memory.labels  # (M, C, H, W), (M,)
    everything = torch.arange(len(labels), device=labels.device)  # (M,)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr / 10, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    for _ in range(cfg.finetune_epochs):
        sgd_epoch(model, images, labels, everything, optimizer, cfg.batch_size, memory.augment)


def _build(p: Prepared, run_dir: Path, progress: bool):
    """The Avalanche benchmark, strategy and memory plugin of a prepared run."""
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
    from avalanche.logging import CSVLogger
    from avalanche.training import JointTraining, Naive
    from avalanche.training.plugins import EvaluationPlugin

    from ccl.memory import AugmentPlugin
    from ccl.memory.codec import MemoryCodec
    from ccl.memory.reservoir import TimedReplayPlugin

    cfg, data = p.config, p.data
    train_x, train_y = data.normalise(data.train_x), torch.from_numpy(data.train_y)  # (N, C, H, W)
    test_x, test_y = data.normalise(data.test_x), torch.from_numpy(data.test_y)
    bench = class_incremental_benchmark(
        {"train": _avalanche_dataset(train_x, train_y), "test": _avalanche_dataset(test_x, test_y)},
        class_order=p.order, num_classes_per_exp=[len(g) for g in p.experience_classes])

    # On the device from the start: a resumed optimizer's momentum is loaded onto the
    # parameters' device, and Avalanche would move only the parameters later.
    model = build_learner(cfg.model, data.num_classes, data.shape, cfg.width, cfg.depth, cfg.norm).to(p.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True),
        bwt_metrics(experience=True, stream=True),
        loggers=[CSVLogger(log_folder=str(run_dir / "logs")), *_optional_loggers(cfg, run_dir)])

    memory = None
    black = (-torch.tensor(data.mean) / torch.tensor(data.std)).to(p.device)  # (C,) crop-flip's padding, normalised
    augments = {"none": None, "dsa": dsa.augmenter(dsa.DSASettings()),
                "crop-flip": functools.partial(crop_flip, fill=black)}
    augment = augments[cfg.mem_augment]
    if p.spec.kind == "device":
        def real_images(classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
            mask = torch.isin(train_y, torch.tensor(classes))
            return train_x[mask], train_y[mask]
        memory = p.spec.make_plugin(cfg.mem_size, cfg.mem_batch, p.device,
                                    MemoryCodec(MEM_DTYPES[cfg.mem_dtype], data.mean, data.std), augment,
                                    p.settings, progress, real_images, p.experience_classes, cfg.stream_slots)
    elif p.spec.kind == "avalanche":
        memory = TimedReplayPlugin(cfg.mem_size, cfg.batch_size, cfg.mem_batch)

    # GDumb: the runner fills the memory and trains a fresh learner on it; replay: the
    # plugin appends memory samples to every minibatch and fills itself after each experience.
    replay = memory is not None and cfg.protocol == "replay"
    plugins = [_Progress(progress, cfg.memory)]
    if cfg.stream_augment != "none":  # before the memory: only the stream samples
        plugins.append(AugmentPlugin(augments[cfg.stream_augment]))
    plugins += [memory] if replay else []
    strategy_plugin = STRATEGIES.get(cfg.strategy).value.plugin
    if replay and strategy_plugin is not None:
        plugins.append(strategy_plugin(memory))  # after the memory: it reads what was replayed
    if augment is not None and cfg.protocol == "gdumb":
        plugins.append(AugmentPlugin(augment))
    strategy_cls = JointTraining if p.spec.kind == "joint" else Naive
    strategy = strategy_cls(model=model, optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(),
                            train_mb_size=cfg.batch_size, train_epochs=cfg.epochs, eval_mb_size=512,
                            device=p.device, plugins=plugins, evaluator=evaluator)
    return bench, strategy, memory


CHECKPOINT = "checkpoint.pt"
RESULT_SERIES = ("accuracy_matrix", "seen_accuracy", "average_accuracy", "forgetting", "bwt", "train_seconds",
                 "memory_update_seconds", "eval_seconds", "memory_updates")


def _rng_state() -> dict:
    """Every generator's state as tensors and plain types (a checkpoint holds no pickles)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos,
                                                      has_gauss, cached],
             "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
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


def _metric_states(metrics: list) -> list[dict]:
    states = []
    for metric in metrics:
        state = {name: getattr(metric, name) for name in _METRIC_STATE if hasattr(metric, name)}
        if hasattr(metric, "forgetting"):
            state["initial"] = dict(metric.forgetting.initial)
            state["last"] = dict(metric.forgetting.last)
        states.append(state)
    return states


def _restore_metric_states(metrics: list, states: list[dict]) -> None:
    if len(metrics) != len(states):
        raise CclError("the checkpoint's metrics do not match this run's; it cannot be resumed")
    for metric, state in zip(metrics, states):
        for name in _METRIC_STATE:
            if name in state:
                setattr(metric, name, state[name])
        if "initial" in state:
            metric.forgetting.initial = dict(state["initial"])
            metric.forgetting.last = dict(state["last"])


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by `train_and_evaluate` (tensors and plain types only), or a
    CclError naming the file; checkpoints of ccl before 2026-11-30 pickled Avalanche
    objects and are refused."""
    return load_torch(path, "checkpoint (delete it to restart the run from the beginning)")


def train_and_evaluate(p: Prepared, run_dir: Path, progress: bool = True, on_experience=None,
                       resume: bool = False) -> tuple[dict[str, Any], dict | None]:
    """Train on the stream (or all at once for `joint`), evaluating after every experience
    and checkpointing after each one into `run_dir`.

    Args:
        on_experience: optional callback(i, results so far) after experience i.
        resume: continue from `run_dir`'s checkpoint, if it has one.

    Returns:
        The results and the final memory state (None without a memory).
    """
    seed_everything(p.config.seed)
    csv_rows = _csv_rows(run_dir / "logs") if resume else {n: [] for n in CSV_LOGS}
    bench, strategy, memory = _build(p, run_dir, progress)
    n = len(p.experience_classes)
    steps = [bench.train_stream] if p.spec.kind == "joint" else list(bench.train_stream)
    results: dict[str, Any] = {key: [] for key in RESULT_SERIES}
    first = 0
    if resume and (run_dir / CHECKPOINT).exists():
        ckpt = load_checkpoint(run_dir / CHECKPOINT)
        strategy.model.load_state_dict(ckpt["model"])
        strategy.optimizer.load_state_dict(ckpt["optimizer"])
        # Avalanche resets the optimizer (momentum included) on its first train() call,
        # recognised by optimized_param_id being None; after the first experience it keeps
        # the state. Marking the parameters as already optimised keeps the loaded momentum.
        strategy.optimized_param_id = dict(strategy.model.named_parameters())
        _restore_metric_states(strategy.evaluator.metrics, ckpt["metric_states"])
        if memory is not None:
            memory.restore(ckpt["memory"])
        results, first = ckpt["results"], ckpt["experience"] + 1
        _set_rng_state(ckpt["rng"])  # last: building the strategy above drew from the generators
    _carry_csv_rows(strategy.evaluator.loggers[0], csv_rows, first)
    if p.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(p.device)
    gdumb = p.config.protocol == "gdumb"
    for i in range(first, len(steps)):
        start = time.perf_counter()
        if gdumb:
            memory.update(sorted(p.experience_classes[i]), strategy.model)
            reinitialise(strategy.model)
            strategy.optimized_param_id = None  # a fresh learner: Avalanche resets the optimiser too
            strategy.train(_memory_experience(memory, i))
        else:
            strategy.train(steps[i])
            if p.config.finetune_epochs and memory is not None:
                _finetune_on_memory(strategy.model, memory, p.config)
        elapsed = time.perf_counter() - start
        update = memory.update_log[-1] if memory and memory.update_log else {"seconds": 0.0}
        start = time.perf_counter()
        metrics = strategy.eval(bench.test_stream)
        row = [float(metrics[ACC_EXP.format(j)]) for j in range(n)]
        seen = n if p.spec.kind == "joint" else i + 1
        for key, value in (("accuracy_matrix", row), ("seen_accuracy", float(np.mean(row[:seen]))),
                           ("average_accuracy", float(metrics[ACC_STREAM])),
                           ("forgetting", float(metrics.get(FORGETTING, 0.0))),
                           ("bwt", float(metrics.get(BWT, 0.0))),
                           ("train_seconds", elapsed - update["seconds"]),
                           ("memory_update_seconds", update["seconds"]),
                           ("eval_seconds", time.perf_counter() - start), ("memory_updates", update)):
            results[key].append(value)
        with _signals_deferred():  # a Ctrl-C now waits until the checkpoint is whole
            save_torch(run_dir / CHECKPOINT, {
                "experience": i, "model": strategy.model.state_dict(), "optimizer": strategy.optimizer.state_dict(),
                "metric_states": _metric_states(strategy.evaluator.metrics), "memory": memory.checkpoint() if memory else None,
                "results": results, "rng": _rng_state(), "class_order": p.order})
        if on_experience:
            on_experience(i, results)
    results = dict(results)
    results["final_average_accuracy"] = results["average_accuracy"][-1]
    results["average_forgetting"] = results["forgetting"][-1]
    results["final_bwt"] = results["bwt"][-1]
    results["peak_ram_mib"] = peak_ram_mib()
    results["peak_gpu_mib"] = (torch.cuda.max_memory_allocated(p.device) / 2**20
                               if p.device.type == "cuda" else None)
    mem_state = memory.state() if memory else None
    images = mem_state["images"] if mem_state else torch.empty(0)
    results["memory_size"] = {"images": int(len(mem_state["labels"])) if mem_state else 0,
                              "dtype": str(images.dtype).replace("torch.", "") if mem_state else None,
                              "bytes": int(images.numel() * images.element_size())}
    return results, mem_state


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the run folder is left resumable."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT and SIGTERM until the block ends (they are delivered then)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def _signals_raise_interrupted():
    """Turn SIGINT and SIGTERM into `Interrupted` for the duration of a run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def status(run_dir: Path) -> dict:
    from ccl.io import STATUS_SHAPE, read_json
    return read_json(Path(run_dir) / "status.json", STATUS_SHAPE)


def _set_status(run_dir: Path, state: str, **extra) -> None:
    write_json(run_dir / "status.json", {"status": state, "pid": os.getpid(),
                                         "updated": dt.datetime.now().isoformat(timespec="seconds"), **extra})


def run(p: Prepared, runs_dir: Path = Path("runs"), progress: bool = True, run_dir: Path | None = None,
        on_experience=None) -> Path:
    """Run a prepared experiment into a new folder under `runs_dir` (or continue the one
    in `run_dir`, from its last checkpoint); returns the folder."""
    resume = run_dir is not None
    if run_dir is None:
        run_dir = new_run_dir(runs_dir, p.config)
        write_json(run_dir / "config.json", resolved_config(p))
    with folder_lock(run_dir, "a run"):
        return _run_locked(p, run_dir, progress, on_experience, resume)


def _run_locked(p: Prepared, run_dir: Path, progress: bool, on_experience, resume: bool) -> Path:
    _set_status(run_dir, "running")
    start = time.perf_counter()
    try:
        with _signals_raise_interrupted():
            results, mem_state = train_and_evaluate(p, run_dir, progress, on_experience, resume)
            results = {"scenario": p.config.scenario, "memory": p.config.memory, "seed": p.config.seed,
                       "class_order": p.order, "experience_classes": p.experience_classes,
                       **results, "total_seconds": time.perf_counter() - start}
            with _signals_deferred():
                if mem_state is not None:
                    save_torch(run_dir / "memory.pt", {
                        **{k: v.cpu() if torch.is_tensor(v) else v for k, v in mem_state.items()},
                        "mean": p.data.mean, "std": p.data.std, "class_names": p.data.classes,
                        "dtype": p.config.mem_dtype})
                write_json(run_dir / "results.json", results)
                _set_status(run_dir, "finished")
    except KeyboardInterrupt as e:
        _set_status(run_dir, "interrupted", signal=str(e) or "SIGINT")
        e.run_dir = run_dir  # so the caller can say what to resume
        raise
    except BaseException as e:
        try:
            _set_status(run_dir, "failed", error=f"{type(e).__name__}: {e}")
        except OSError:
            pass  # e.g. the disk is full: the status cannot be written either; report the cause
        raise
    return run_dir


def resume_run(run_dir: Path, progress: bool = True, on_experience=None) -> tuple[Path, bool]:
    """Continue an interrupted run; returns (folder, whether anything was left to do)."""
    from ccl.io import CONFIG_SHAPE, RESULTS_SHAPE, read_json
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise CclError(f"{run_dir}: not a run folder (no config.json)")
    if (run_dir / "results.json").exists() and status(run_dir).get("status") == "finished":
        read_json(run_dir / "results.json", RESULTS_SHAPE)  # a corrupt results file is an error, not "finished"
        return run_dir, False
    config = read_json(run_dir / "config.json", CONFIG_SHAPE)
    try:
        cfg = cfgmod.from_dict(RunConfig, config["run"], f"{run_dir / 'config.json'}: run")
    except (KeyError, TypeError):
        raise CclError(f"{run_dir / 'config.json'}: not a ccl run configuration") from None
    if isinstance(config.get("memory_settings"), dict):
        # The settings that ran, not what the preset file says today.
        cfg = dataclasses.replace(cfg, memory_config=None, memory_settings=config["memory_settings"])
    p = prepare(cfg)
    if p.order != config.get("class_order"):
        raise CclError(f"{run_dir}: the data set's classes changed since the run started")
    recorded = (config.get("data") or {}).get("fingerprint")
    if recorded is not None and recorded != p.data.fingerprint():
        raise CclError(f"{run_dir}: the data changed since the run started (images, labels or per-class "
                       "counts differ); resuming would mix two data sets, so start a new run")
    for leftover in run_dir.glob(".*.tmp"):  # a write cut short by kill -9 (ccl.io writes atomically)
        leftover.unlink(missing_ok=True)
    if (run_dir / CHECKPOINT).exists():
        load_checkpoint(run_dir / CHECKPOINT)  # fail early, before anything is overwritten
    return run(p, run_dir=run_dir, progress=progress, on_experience=on_experience), True
