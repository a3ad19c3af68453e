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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccl import config as cfgmod
from ccl.data import ImageSet, load_dataset
from ccl.data.scenarios import Scenario, class_order, get_scenario, split_classes
from ccl.errors import CclError
from ccl.memory import MEMORIES, FillerSettings, MemorySpec
from ccl.memory import memory_settings as memory_settings_of
from ccl.models import build_learner
from ccl.run_config import MAX_LR, MEM_AUGMENTS, PROTOCOLS, STREAM_AUGMENTS, RunConfig, given_config  # noqa: F401
from ccl.strategies import STRATEGIES, Strategy
from ccl.training import pick_device, refuse_oversized


# the torch dtype of each --mem-dtype (ccl.run_config.MEM_DTYPE_NAMES)
MEM_DTYPES = {"float32": torch.float32, "float16": torch.float16, "uint8": torch.uint8}


def make_config(**values: Any) -> RunConfig:
    """`given_config`, resolved: no `auto` or None left where the run needs a value (what
    config.json records). CclError (not ValueError) for bad values."""
    cfg = given_config(**values)
    entry, spec = STRATEGIES.get(cfg.strategy).value, MEMORIES.get(cfg.memory).value
    if cfg.mem_batch == 0 and spec.kind in ("device", "avalanche") and not entry.memory_alone:
        raise CclError("run: --mem-batch 0 would fill a memory that is never replayed; use --memory none")
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


def memory_settings(spec: MemorySpec, cfg: RunConfig, replay: bool = True) -> tuple[Any, FillerSettings]:
    """The memory's settings (dataclass defaults <- preset <- overrides <- the variant's
    fixed settings) and its filler's (`FillerSettings`), as `ccl.memory.memory_settings`
    splits them. The preset is --memory-config, else under replay the memory's own
    (`replay_preset`), else the method's."""
    preset = cfg.memory_config or (spec.replay_preset if replay else None)
    return memory_settings_of(cfg.memory, preset, cfg.memory_settings)


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
    filler_settings: FillerSettings = FillerSettings()  # a condensing memory's, around its method

    def learner_training(self) -> tuple[int, int]:
        """The epochs and minibatch size the learner trains each experience with: the
        run's, or the strategy's own (GDumb's fresh learner)."""
        if self.strategy.own_training is not None:
            return self.strategy.own_training(self.strategy_settings)
        return self.config.epochs, self.config.batch_size


def prepare(cfg: RunConfig) -> Prepared:
    scenario = get_scenario(cfg.scenario)
    spec, entry = MEMORIES.get(cfg.memory).value, STRATEGIES.get(cfg.strategy).value
    settings, filler_settings = memory_settings(spec, cfg, not entry.memory_alone)
    hyper = strategy_settings(entry, cfg)
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
    if cfg.online:
        online_problem(cfg, spec, entry)
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
    summaries = settings.summary_slots(cfg.mem_size) if hasattr(settings, "summary_slots") else None
    if summaries is not None and 0 < summaries < data.num_classes:
        raise CclError(f"{name} keeps {summaries} of its {cfg.mem_size} slots as summaries, fewer than the "
                       f"{data.num_classes} classes: raise --mem-size or --set share=...")
    if (spec.on_device or spec.class_balanced) and cfg.mem_size > len(data.train_y):
        raise CclError(f"--mem-size {cfg.mem_size} is more than all the training images ({len(data.train_y)})")
    order = class_order(data.num_classes, cfg.seed, cfg.class_order)
    groups = split_classes(order, cfg.experiences or scenario.experiences)
    return Prepared(cfg, scenario, spec, settings, entry, hyper, data, device, order, groups, filler_settings)


def online_problem(cfg: RunConfig, spec: MemorySpec, entry: Strategy) -> None:
    """A CclError when what `cfg` runs cannot run on its online stream: joint training has
    no stream, and while the boundaries are hidden, a memory filled at an experience's end,
    a strategy that acts there, or finetuning there would each need to be told where."""
    if spec.joint:
        raise CclError(f"--online streams the experiences; memory {cfg.memory!r} trains on all the data at once")
    if cfg.reveal_boundaries:
        return
    hint = "or add --reveal-boundaries"
    if not spec.online:
        online = ", ".join(e.name for e in MEMORIES.entries() if e.value.online and e.value.on_device)
        raise CclError(f"--online hides where experiences end, and memory {cfg.memory!r} fills at an experience's "
                       f"end: use {online} ({hint})")
    if not entry.online:
        online = ", ".join(e.name for e in STRATEGIES.entries() if e.value.online)
        raise CclError(f"--online hides where experiences end, and --strategy {cfg.strategy} acts at an "
                       f"experience's end: use {online} ({hint})")
    if cfg.finetune_epochs:
        raise CclError(f"--online hides where experiences end, and --finetune-epochs trains at an experience's "
                       f"end ({hint})")


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


# The most training images a class of the CPU run presets (configs/runs/cpu-protocol.toml);
# split-cifar10's own 5,000 at width 128 took 45 minutes or more on 2 CPU cores.
CPU_IMAGES_PER_CLASS = 1000


def cpu_advice(p: Prepared) -> str | None:
    """One line when a run on a CPU trains on a GPU-sized share of its data (a scenario's
    own defaults), naming the presets made for a CPU; else None."""
    per_class = len(p.data.train_y) // p.data.num_classes
    if p.device.type != "cpu" or per_class <= CPU_IMAGES_PER_CLASS:
        return None
    return (f"note: no GPU, and {per_class:,} training images a class at width {p.config.width} are sized for "
            "one (an hour or more on 2 CPU cores: the estimate follows once minibatches are timed); on a CPU use "
            "--config cpu-protocol "
            "(1,000 a class, a few minutes) or --config cpu-quick (under a minute)")


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
            "memory_settings": p.spec.recorded_settings(p.settings, p.filler_settings),
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
