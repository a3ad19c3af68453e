"""The run settings as given (`RunConfig`) and the checks of their values alone.

Nothing here loads torch or Avalanche, so that `ccl run --mem-size -5` is one line at
once; ccl.experiment resolves a RunConfig and checks it against the registries and data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ccl.config import from_dict, read_toml
from ccl.errors import CclError, closest, unknown_name
from ccl.names import LEARNERS, NORMS, STRATEGIES, STRATEGY_SETTINGS, check_name, scenarios
from ccl.resources import resource_dir


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
    download: bool = False         # --download: fetch through torchvision when no local copy exists
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
    # Seconds between checkpoints inside an experience or a memory's condensation, which
    # `--resume` continues from; 0: only at each experience's end. A save takes well under
    # a second for the learners and memories ccl builds.
    checkpoint_every: float = 300.0
    # Online continual learning: each experience streams once (one epoch) in minibatches of
    # batch_size (ONLINE_DEFAULTS: 10 unless given), and neither the memory nor the strategy
    # is told where an experience ends; the boundaries only say when the run evaluates.
    online: bool = False
    # online: tell the memory and the strategy where experiences end, so that memories filled
    # at an experience's end run too (their filler reads its images once more at that end).
    reveal_boundaries: bool = False

    def __post_init__(self):
        positive = ["mem_size", "epochs", "batch_size", "width", "depth"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.depth > MAX_DEPTH:  # before a learner of a million blocks is built to count its weights
            raise ValueError(f"--depth must be at most {MAX_DEPTH} (blocks of the convnet), got {self.depth}")
        for name in ("mem_batch", "seed", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if not 0 < self.lr <= MAX_LR:  # also refuses nan and inf
            raise ValueError(f"--lr must be in (0, {MAX_LR}], got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.weight_decay <= 1:
            raise ValueError(f"--weight-decay must be in [0, 1], got {self.weight_decay}")
        if not 0 <= self.checkpoint_every < float("inf"):  # also refuses nan
            raise ValueError(f"--checkpoint-every must be a number of seconds >= 0, got {self.checkpoint_every}")
        if self.seed >= 2**32:
            raise ValueError(f"--seed must be below 2**32 (numpy's limit), got {self.seed}")
        if self.mem_batch > max(self.mem_size, self.batch_size):
            raise ValueError(f"--mem-batch {self.mem_batch} is more than the memory holds (--mem-size "
                             f"{self.mem_size}) and than a stream batch (--batch-size {self.batch_size})")
        if self.online and self.epochs != 1:
            raise ValueError(f"--online streams each sample once: --epochs must be 1 (the default online), "
                             f"got {self.epochs}")
        if self.reveal_boundaries and not self.online:
            raise ValueError("--reveal-boundaries applies to an online stream (--online); offline runs always "
                             "know where experiences end")
        if self.experiences is not None and self.experiences < 1:
            raise ValueError(f"--experiences must be at least 1, got {self.experiences}")
        for name in ("train_per_class", "test_per_class"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for kind, value, choices in (("model", self.model, LEARNERS), ("norm", self.norm, NORMS),
                                     ("protocol", self.protocol, PROTOCOLS), ("mem-dtype", self.mem_dtype, MEM_DTYPE_NAMES),
                                     ("stream-augment", self.stream_augment, STREAM_AUGMENTS),
                                     ("mem-augment", self.mem_augment, MEM_AUGMENTS)):
            if value not in choices:
                raise ValueError(str(unknown_name(kind, value, choices)))


# Each convnet block halves the image: 16 take any image ccl reads (at most 2**16 pixels a
# side) down to one pixel; the papers' ConvNet-D uses 3 to 6.
MAX_DEPTH = 16
MAX_LR = 10.0  # SGD beyond this diverges on every learner ccl has: a typo, not a setting
# --protocol is the older name of two strategies' choice: replay beside the stream (any
# strategy) or GDumb's fresh learner on the memory alone (--strategy gdumb).
PROTOCOLS = {"replay": None, "gdumb": "gdumb"}
MEM_DTYPE_NAMES = ("float32", "float16", "uint8")  # ccl.experiment.MEM_DTYPES maps them to torch
MEM_AUGMENTS = ("auto", "none", "dsa", "crop-flip")
# What `--online` changes unless given (over a scenario's defaults): one pass, and minibatches
# of 10 stream samples with 10 replayed, the field's online setting (mammoth's ER-ACE online
# configuration, datasets/configs/seq-cifar10/er_ace.yaml: batch_size 10, n_epochs 1, and
# its minibatch_size defaulting to batch_size).
ONLINE_DEFAULTS = {"epochs": 1, "batch_size": 10, "mem_batch": 10}
STREAM_AUGMENTS = ("none", "crop-flip")


def given_config(**values: Any) -> RunConfig:
    """RunConfig from keyword values over the scenario's defaults over RunConfig's own,
    as given: `auto` and None still stand for what each run will resolve them to."""
    scenario = values.get("scenario", RunConfig.scenario)
    check_name("scenario", scenario, scenarios())
    defaults = read_toml(resource_dir("scenarios") / f"{scenario}.toml").get("defaults", {})
    online = ONLINE_DEFAULTS if values.get("online") else {}
    cfg = from_dict(RunConfig, {**defaults, **online, **values}, "run")
    sized = [f"--{k}" for k in ("width", "depth") if values.get(k) is not None]
    if cfg.model != "convnet" and sized:  # given, not a scenario's default: it would be ignored
        raise CclError(f"{' and '.join(sized)} size{'s' if len(sized) == 1 else ''} the convnet; --model {cfg.model} "
                       "has its own fixed size")
    return cfg


# What a run preset's table for one strategy (`[strategies.NAME]`) may set beside that
# strategy's own settings: the optimiser and the batches, which papers tune method by method
# (mammoth's best_args). The protocol (data, model, epochs, augmentation, memory) stays one
# for every strategy, so that a comparison measures them alike.
STRATEGY_RUN_KEYS = ("lr", "momentum", "weight_decay", "batch_size", "mem_batch")


def strategy_table_name(strategy: str) -> str:
    """The TOML header of a strategy's table: `[strategies.er]`, `[strategies."der++"]`."""
    bare = strategy.replace("-", "").replace("_", "").isalnum()
    return f"[strategies.{strategy}]" if bare else f'[strategies."{strategy}"]'


def strategy_tables(tables: Any, where: str) -> dict[str, dict[str, Any]]:
    """A run preset's per-strategy tables, checked by strategy name and key (their values
    are checked as the run's own, once a table is laid over them)."""
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise CclError(f"{where}: strategies should hold one table a strategy, e.g. [strategies.er] lr = 0.1")
    for name, table in tables.items():
        if name not in STRATEGIES:
            guess = closest(name, STRATEGIES)
            hint = f" (did you mean {strategy_table_name(guess)}?)" if guess is not None else ""
            raise CclError(f"{where}: {strategy_table_name(name)} names no strategy{hint}; "
                           f"choose one of: {', '.join(STRATEGIES)}")
        known = (*STRATEGY_RUN_KEYS, *STRATEGY_SETTINGS[name])
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise CclError(f"{where}: {strategy_table_name(name)} has an unknown key {unknown[0]!r}; "
                           f"known keys: {', '.join(known)}")
    return {name: dict(table) for name, table in tables.items()}


def is_own_setting(strategy: str, key: str) -> bool:
    """Whether `key` of `[strategies.NAME]` is the strategy's own setting (a field of its
    settings dataclass) rather than a run key; a name that is both is the strategy's own
    (GDumb's lr and batch_size are its fresh learner's, not the run's)."""
    return key in STRATEGY_SETTINGS.get(strategy, ())


def with_strategy_table(values: dict[str, Any], table: dict[str, Any], strategy: str) -> dict[str, Any]:
    """Run `values` with the preset table of `strategy` laid over them: its run keys replace
    theirs, and its own settings join their `strategy_settings`, over them."""
    run = {k: v for k, v in table.items() if not is_own_setting(strategy, k)}
    own = {k: v for k, v in table.items() if is_own_setting(strategy, k)}
    if not own:
        return {**values, **run}
    return {**values, **run, "strategy_settings": {**(values.get("strategy_settings") or {}), **own}}


def chosen_strategies(values: dict[str, Any]) -> tuple[str, ...]:
    """The strategies run `values` name: `strategy` (a comma list is `ccl compare`'s axis),
    else the one `--protocol` names, else RunConfig's default."""
    named = tuple(s.strip() for s in str(values.get("strategy") or "").split(",") if s.strip())
    return named or (PROTOCOLS.get(str(values.get("protocol"))) or RunConfig.strategy,)
