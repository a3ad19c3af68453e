"""One experiment's configuration: the run settings, resolved once into a concrete record,
checked against each other and the data, with the data loaded (`prepare`), before any
run folder exists, so bad input leaves nothing behind.

The memory, the strategy and the scenario come from their registries; checks read what
an entry can do (on the device, class-balanced, replays, trains on the memory alone),
never its name.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import platform
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccl import config as cfgmod
from ccl.condense.methods import method_settings
from ccl.data import ImageSet, load_dataset
from ccl.data.scenarios import Scenario, class_order, get_scenario, split_classes
from ccl.errors import CclError
from ccl.memory import MEMORIES, MemorySpec
from ccl.models import LEARNERS, NORMS, build_learner
from ccl.strategies import STRATEGIES, Strategy
from ccl.training import pick_device, refuse_oversized


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
    strategy_settings: dict[str, Any] = field(default_factory=dict)  # overrides of the strategy's defaults

    def __post_init__(self):
        positive = ["mem_size", "epochs", "batch_size", "width", "depth"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("mem_batch", "seed", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if not 0 < self.lr <= MAX_LR:  # also refuses nan and inf
            raise ValueError(f"--lr must be in (0, {MAX_LR}], got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.weight_decay <= 1:
            raise ValueError(f"--weight-decay must be in [0, 1], got {self.weight_decay}")
        if self.seed >= 2**32:
            raise ValueError(f"--seed must be below 2**32 (numpy's limit), got {self.seed}")
        if self.mem_batch > max(self.mem_size, self.batch_size):
            raise ValueError(f"--mem-batch {self.mem_batch} is more than the memory holds (--mem-size "
                             f"{self.mem_size}) and than a stream batch (--batch-size {self.batch_size})")
        if self.experiences is not None and self.experiences < 1:
            raise ValueError(f"--experiences must be at least 1, got {self.experiences}")
        for name in ("train_per_class", "test_per_class"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.mem_batch == 0 and MEMORIES.get(self.memory).value.kind in ("device", "avalanche") \
                and not STRATEGIES.get(self.strategy).value.memory_alone:
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


MAX_LR = 10.0  # SGD beyond this diverges on every learner ccl has: a typo, not a setting
# --protocol is the older name of two strategies' choice: replay beside the stream (any
# strategy) or GDumb's fresh learner on the memory alone (--strategy gdumb).
PROTOCOLS = {"replay": None, "gdumb": "gdumb"}
MEM_DTYPES = {"float32": torch.float32, "float16": torch.float16, "uint8": torch.uint8}
MEM_AUGMENTS = ("auto", "none", "dsa", "crop-flip")
STREAM_AUGMENTS = ("none", "crop-flip")


def given_config(**values: Any) -> RunConfig:
    """RunConfig from keyword values over the scenario's defaults over RunConfig's own,
    as given: `auto` and None still stand for what each run will resolve them to."""
    defaults = get_scenario(values.get("scenario", RunConfig.scenario)).defaults
    return cfgmod.from_dict(RunConfig, {**defaults, **values}, "run")


def make_config(**values: Any) -> RunConfig:
    """`given_config`, resolved: no `auto` or None left where the run needs a value (what
    config.json records). CclError (not ValueError) for bad values."""
    cfg = given_config(**values)
    entry, spec = STRATEGIES.get(cfg.strategy).value, MEMORIES.get(cfg.memory).value
    alone = PROTOCOLS[cfg.protocol]  # the strategy --protocol names, if it names one
    if entry.memory_alone and values.get("protocol") == "replay":
        raise CclError(f"--strategy {cfg.strategy} trains on the memory alone; it cannot be --protocol replay")
    if alone and not entry.memory_alone:
        if cfg.strategy != RunConfig.strategy:
            raise CclError(f"--protocol {cfg.protocol} trains a fresh learner on the memory alone: --strategy "
                           f"{cfg.strategy} has no stream to replay beside (use --strategy {alone})")
        entry, cfg = STRATEGIES.get(alone).value, dataclasses.replace(cfg, strategy=alone)
    protocol = next(name for name, named in PROTOCOLS.items() if bool(named) == entry.memory_alone)
    cfg = dataclasses.replace(cfg, protocol=protocol)
    if cfg.mem_augment == "auto":
        cfg = dataclasses.replace(cfg, mem_augment="dsa" if spec.on_device else "none")
    if cfg.stream_slots is None:
        slots = spec.on_device and spec.policy == "end" and not entry.memory_alone and entry.stream_slots
        cfg = dataclasses.replace(cfg, stream_slots=slots)
    return cfg


def memory_settings(spec: MemorySpec, cfg: RunConfig, replay: bool = True) -> Any:
    """The memory method's settings: dataclass defaults <- preset <- overrides <- the
    variant's fixed settings (every memory with settings is a condensation method). The
    preset is --memory-config, else under replay the memory's own (`replay_preset`),
    else the method's."""
    if spec.settings is None:
        if cfg.memory_settings or cfg.memory_config:
            raise CclError(f"memory {cfg.memory!r} takes no settings")
        return None
    preset = cfg.memory_config or (spec.replay_preset if replay else None)
    return method_settings(cfg.memory, preset, cfg.memory_settings)


def strategy_settings(entry: Strategy, cfg: RunConfig) -> Any:
    """The strategy's hyperparameters: its dataclass's defaults <- --strategy-set overrides."""
    return cfgmod.from_dict(entry.settings, cfg.strategy_settings, f"strategy {cfg.strategy}")


@dataclass
class Prepared:
    """A checked configuration with its data loaded: nothing can fail for bad input after this."""
    config: RunConfig
    scenario: Scenario
    spec: MemorySpec
    settings: Any                  # the memory method's, or None
    strategy: Strategy
    strategy_settings: Any
    data: ImageSet
    device: torch.device
    order: list[int]
    experience_classes: list[list[int]]


def prepare(cfg: RunConfig) -> Prepared:
    scenario = get_scenario(cfg.scenario)
    spec, entry = MEMORIES.get(cfg.memory).value, STRATEGIES.get(cfg.strategy).value
    settings, hyper = memory_settings(spec, cfg, not entry.memory_alone), strategy_settings(entry, cfg)
    device = pick_device(cfg.device)
    for flag, package in (("tensorboard", "tensorboard"), ("wandb", "wandb")):
        if getattr(cfg, flag):
            try:  # now, not when the logger is built: bad input must leave no run folder
                importlib.import_module(package)
            except ImportError:
                raise CclError(f"--{flag} needs the {package} package: pip install {package}") from None
    # Checks of the settings alone come before the data load, which can take seconds.
    name = f"memory {cfg.memory!r}"
    if cfg.mem_dtype != "float32" and not spec.on_device:
        raise CclError(f"--mem-dtype applies to the on-device memories; {name} stores what Avalanche gives it")
    if cfg.mem_augment != "none" and not spec.on_device:
        raise CclError(f"--mem-augment applies to the on-device memories; {name} has none")
    if entry.memory_alone and not (spec.on_device and spec.policy == "end"):
        raise CclError(f"--strategy {cfg.strategy} (--protocol gdumb) trains on a class-balanced memory alone, "
                       f"filled at each step; {name} is not one (use random, herding or a condensing memory)")
    if entry.memory_alone and getattr(settings, "expert", None) == "learner":
        raise CclError(f"{name} with expert = \"learner\" matches the learner's training on each experience, "
                       f"and --strategy {cfg.strategy} fills the memory before the learner trains: "
                       "use expert = \"trained\" (--set expert=trained)")
    replays = spec.on_device and not entry.memory_alone
    if entry.needs_replay and not replays:
        raise CclError(f"--strategy {cfg.strategy} replays from the on-device memory; {name} under "
                       f"--protocol {cfg.protocol} has none (use random, herding or a condensing memory, replay)")
    if cfg.stream_augment != "none" and entry.memory_alone:
        raise CclError("--stream-augment applies to the stream; --protocol gdumb trains on the memory alone "
                       "(its images follow --mem-augment)")
    if cfg.stream_slots and spec.policy == "stream":
        raise CclError(f"--stream-slots: {name} is filled from the stream already")
    if cfg.stream_slots and not replays:
        raise CclError(f"--stream-slots fills the on-device memory while replaying; {name} under "
                       f"--protocol {cfg.protocol} has none (use random, herding or a condensing memory, replay)")
    if cfg.finetune_epochs and not replays:
        raise CclError(f"--finetune-epochs follows replay with the on-device memory; {name} under "
                       f"--protocol {cfg.protocol} has nothing to finetune on")
    data = load_dataset(scenario.dataset, cfg.data_dir, cfg.download)
    with torch.device("meta"):  # counted, not allocated
        weights = sum(t.numel() for t in build_learner(cfg.model, data.num_classes, data.shape, cfg.width,
                                                       cfg.depth, cfg.norm).parameters())
    # 4 copies of 4 bytes: the weights, their gradients, SGD's momentum, the checkpoint's copy
    refuse_oversized(16 * weights, f"--model {cfg.model} --width {cfg.width} --depth {cfg.depth} ({weights:,} "
                                   "weights)", device)
    if cfg.train_per_class or cfg.test_per_class:
        data = data.first_per_class(cfg.train_per_class, cfg.test_per_class)
    if spec.class_balanced and cfg.mem_size < data.num_classes:
        raise CclError(f"--mem-size {cfg.mem_size} is smaller than the number of classes "
                       f"({data.num_classes}): every class needs at least one slot")
    if (spec.on_device or spec.class_balanced) and cfg.mem_size > len(data.train_y):
        raise CclError(f"--mem-size {cfg.mem_size} is more than all the training images ({len(data.train_y)})")
    order = class_order(data.num_classes, cfg.seed, cfg.class_order)
    groups = split_classes(order, cfg.experiences or scenario.experiences)
    return Prepared(cfg, scenario, spec, settings, entry, hyper, data, device, order, groups)


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
            "strategy_settings": cfgmod.to_dict(p.strategy_settings),
            "scenario": dataclasses.asdict(p.scenario),
            "class_order": p.order, "experience_classes": p.experience_classes,
            "classes": p.data.classes,
            "data": {"train_images": int(len(p.data.train_y)), "test_images": int(len(p.data.test_y)),
                     "shape": list(p.data.shape), "mean": p.data.mean, "std": p.data.std,
                     "fingerprint": p.data.fingerprint()},
            "device": {"name": str(p.device), "description": device_description(p.device)},
            "versions": versions(), "host": socket.gethostname(), "argv": sys.argv,
            "created": dt.datetime.now().isoformat(timespec="seconds")}
