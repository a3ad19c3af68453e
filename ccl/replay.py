"""`CondensedReplay`: ccl's on-device replay memory as one Avalanche plugin, for any
`SupervisedTemplate` (`Naive`, ...), any model and any class-incremental benchmark.

The plugin assembles what `ccl run` assembles for it (the memory, its filler and
settings, the replay augmentation, a strategy's loss and the divergence guard) from
names, and delegates every Avalanche hook to those pieces: the guard first, then the
memory, then the strategy's loss, which reads what the memory replayed.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from avalanche.core import SupervisedPlugin
from torch import nn
from torch.utils.data import DataLoader, Subset

from ccl import config as cfgmod
from ccl.assembly import FeatureMemory, ReplayParts, WithEmbed, build_replay  # noqa: F401 (WithEmbed: public here)
from ccl.condense import dsa
from ccl.condense.methods import METHODS
from ccl.errors import CclError
from ccl.fields import settings_problem, size_problem
from ccl.guards import DivergenceGuard
from ccl.memory import MEMORIES, FillerSettings, ReplayMemoryPlugin, memory_settings
from ccl.memory.fillers import RandomFiller
from ccl.models.stages import last_linear
from ccl.strategies import STRATEGIES
from ccl.training import refuse_oversized

Settings = dict[str, Any] | Any  # a dict of overrides over the shipped preset, or the settings dataclass

AUGMENTS: dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor] | None]] = {
    "none": lambda: None,
    "dsa": lambda: dsa.augmenter(dsa.DSASettings()),  # what condensed images are made to be trained under
}


class CondensedReplay(SupervisedPlugin):
    """Replay from a fixed budget of images, real or condensed, kept on the training device.

    At the end of each experience the plugin takes that experience's real images from
    `strategy.experience.dataset` (its eval view, without train transforms), shrinks the
    older classes' slots to their share of `mem_size` and fills the new classes' slots
    with `method` (random or herded real images, or images condensed by DataDAM, DM, PAD
    or MTT). During training it appends `mem_batch` memory images, augmented afresh, to
    every minibatch once it is on the device, and `strategy` shapes the loss over the
    stream and memory samples (ER, ER-ACE, DER, DER++, ...).

    Class-incremental only: every experience must carry task label 0 (as Avalanche's
    `nc_benchmark(..., task_labels=False)` and `class_incremental_benchmark` give);
    another task label is refused before the experience trains. The memory lives on
    `strategy.device`, read when training starts. The sizes each class will be cut to
    later are read from the experience's stream when Avalanche exposes it (condensers
    that match those sizes, `nested`, use them).

    Beside other plugins: the strategy's loss is the template's `criterion()` while
    training, so the terms other plugins add in `before_backward` (LwF, EWC, SI, ...) add
    to it, in either order. A second replay (Avalanche's `Replay` strategy, a
    `ReplayPlugin` or another plugin with a buffer it replays, a second ccl memory) is
    refused before any step. A training loss that becomes NaN or infinite raises
    `ccl.guards.Diverged`, as `ccl run` ends such a run `diverged`.

    Features: herding and the condensers rank images by the model's features. A model
    with an `embed(x) -> (N, D)` method gives them; any other model gives the input of its
    last `nn.Linear` (the penultimate layer, caught by a forward hook for the call). A
    model with neither is refused when training starts, unless the method is `random`
    or `reservoir`, which need no features.

    Args:
        mem_size: images in memory, all classes together (each seen class keeps
            `mem_size // classes`; at least one a class).
        method: a memory ccl has: datadam (the default; its preset condenses a Split
            CIFAR-10 experience in one to two and a half minutes on 2 CPU cores), dm, pad,
            mtt, random, herding, herding-soft (class-balanced, filled at each experience's
            end), reservoir (one reservoir over the stream, as the ER and DER papers),
            class-balanced-reservoir (CBRS over the stream) or online-datadam (summaries
            condensed from the stream as it passes, beside a reservoir).
        settings: the method's settings: None for the preset `ccl run` replays with
            (configs/<method>.toml; pad: configs/pad-replay.toml), a dict of overrides over
            that preset (e.g. {"iterations": 20}; the keys of the memory's filler, such as
            "holdout", too: `ccl.memory.fillers.FillerSettings`), or an instance of its
            settings dataclass (`ccl.condense.datadam.DataDAMSettings`, ...; the filler's
            defaults then).
        mem_batch: memory images appended to every training minibatch (0: none).
        augment: "dsa" (differentiable Siamese augmentation, one random family a call),
            "none", or a function x -> x applied to the replayed images of a minibatch.
        strategy: the replay loss: "er" (one cross-entropy), "er-ace", "der", "der++",
            "a-gem", "bic" or "icarl" (`ccl list` describes them); None keeps the
            strategy's criterion.
        strategy_settings: that strategy's hyperparameters (a dict over its defaults, or
            its settings dataclass), e.g. {"alpha": 0.1, "beta": 0.5} for "der++".
        progress: progress bars while condensing.
        online: an online stream that hides where experiences end (build the template with
            `train_epochs=1` and the online minibatch size, e.g. `train_mb_size=10`): the
            memory learns its classes from the stream minibatches, not at an experience's
            end (`ccl.memory.OnlineReservoirMemoryPlugin`); only a memory and a strategy
            that need no boundary are accepted (reservoir, class-balanced-reservoir or
            online-datadam; er, er-ace, der, der++). False: told at every experience's
            end, as Avalanche's `split_online_stream` experiences (one a minibatch) tell it.

    Attributes:
        memory: the memory plugin (images, labels, classes, update_log), built when
            training starts; None before.
        loss: the strategy's loss plugin, or None.

    Example:
        >>> strategy = Naive(model=model, optimizer=optimizer,
        ...                  plugins=[CondensedReplay(mem_size=200, method="datadam", strategy="der++")])
    """

    def __init__(self, mem_size: int = 200, method: str = "datadam", settings: Settings = None, mem_batch: int = 32,
                 augment: str | Callable[[torch.Tensor], torch.Tensor] | None = "dsa", strategy: str | None = "er",
                 strategy_settings: Settings = None, progress: bool = False, online: bool = False):
        super().__init__()
        if problem := size_problem(mem_size, "mem_size", 1) or size_problem(mem_batch, "mem_batch", 0):
            raise ValueError(problem)  # now, not an experience later (20.5 or NaN is no count)
        self.mem_size, self.mem_batch, self.method, self.progress = mem_size, mem_batch, method, progress
        on_device = [e.name for e in MEMORIES.entries() if e.value.on_device]
        if method not in on_device:  # the registry's own message would offer memories the plugin refuses
            what = "is not an on-device memory" if method in MEMORIES.names() else "is not a memory ccl has"
            raise ValueError(f"method {method!r} {what}; choose one of: {', '.join(on_device)}")
        self.spec = MEMORIES.get(method).value
        self.settings, self.filler_settings = _method_settings(method, self.spec, settings)
        if callable(augment) or augment is None:
            self.augment = augment
        elif augment in AUGMENTS:
            self.augment = AUGMENTS[augment]()
        else:
            raise ValueError(f"augment {augment!r}: one of {', '.join(AUGMENTS)}, None or a function x -> x")
        self.strategy_name = strategy
        beside = [e.name for e in STRATEGIES.entries() if not e.value.memory_alone and e.value.plugin is not None]
        if strategy is not None and strategy not in beside:
            what = (f"does not replay beside the stream (`ccl run --strategy {strategy}` takes it)"
                    if strategy in STRATEGIES.names() else "is not a strategy ccl has")
            raise ValueError(f"strategy {strategy!r} {what}; choose one of: {', '.join(beside)}, or None "
                             "(the template's own criterion)")
        self.entry = STRATEGIES.get(strategy).value if strategy is not None else None
        self.strategy_settings = None
        if self.entry is not None:
            self.strategy_settings = _settings(self.entry.settings, strategy_settings, f"strategy {strategy}")
        if problem := (settings_problem(self.settings, f"settings of {method!r}")
                       or settings_problem(self.strategy_settings, f"strategy_settings of {strategy!r}")):
            raise ValueError(problem)  # a dataclass given as it is: NaN passes its own range checks
        self.online = online
        if online and not self.spec.online:
            raise ValueError(f"online=True hides where experiences end, and method {method!r} fills at an "
                             "experience's end: use reservoir, class-balanced-reservoir or online-datadam")
        if online and self.entry is not None and not self.entry.online:
            raise ValueError(f"online=True hides where experiences end, and strategy {strategy!r} acts at an "
                             f"experience's end: use {', '.join(e.name for e in STRATEGIES.entries() if e.value.online)}")
        self.needs_features = self.spec.policy == "end" and self.spec.filler is not RandomFiller
        self.parts: ReplayParts | None = None  # built when training starts
        self.memory: ReplayMemoryPlugin | None = None
        self.loss: SupervisedPlugin | None = None
        # `ccl run`'s check of the training loss: NaN or infinite raises `ccl.guards.Diverged`
        self.guard = DivergenceGuard(hint="try a smaller learning rate")
        self._experience = None  # the experience training now: the memory's real images

    def before_training(self, strategy, **kwargs):
        _refuse_second_replay(self, strategy)
        if self.online and strategy.train_epochs != 1:
            raise ValueError(f"online=True streams each sample once: build the strategy with train_epochs=1, "
                             f"not {strategy.train_epochs}")
        if self.memory is None:
            _check_model(strategy.model, self.needs_features, self.strategy_name)
            self.parts = self._build(torch.device(strategy.device), strategy.model)
            self.memory, self.loss = self.parts.memory, self.parts.loss
        self._each("before_training", strategy, **kwargs)

    def _build(self, device: torch.device, model: nn.Module) -> ReplayParts:
        stream_slots = self.entry is not None and self.entry.stream_slots and self.mem_batch > 0
        return build_replay(spec=self.spec, settings=self.settings, filler_settings=self.filler_settings,
                            strategy=self.entry,
                            strategy_settings=self.strategy_settings, mem_size=self.mem_size, mem_batch=self.mem_batch,
                            device=device, learner=model, real_images=self._real_images, augment=self.augment,
                            stream_slots=stream_slots, progress=self.progress,
                            guard=self.guard, boundaries=not self.online)

    def before_training_exp(self, strategy, **kwargs):
        experience = strategy.experience
        labels = sorted(set(experience.task_labels))
        if labels != [0]:
            raise ValueError(f"CondensedReplay is class-incremental (task label 0); experience "
                             f"{experience.current_experience} has task labels {labels}: build the benchmark "
                             f"without task labels (nc_benchmark(..., task_labels=False))")
        schedule = _schedule(experience)
        classes = set(self.memory.classes) | set(experience.classes_in_this_experience)
        classes |= {c for group in schedule for c in group}
        if self.spec.class_balanced and len(classes) > self.mem_size:
            raise ValueError(f"mem_size {self.mem_size} cannot give each of the {len(classes)} classes "
                             f"{'of the stream' if schedule else 'seen so far'} a slot: raise mem_size")
        _refuse_oversized_memory(self.mem_size, self.mem_batch, experience, strategy.device)
        self._experience = experience
        if isinstance(self.memory, FeatureMemory):
            self.memory.schedule = schedule
        self._each("before_training_exp", strategy, **kwargs)

    def after_training_exp(self, strategy, **kwargs):
        self._each("after_training_exp", strategy, **kwargs)
        self._experience = None  # its images go back

    def _each(self, hook: str, strategy, **kwargs) -> None:
        """Call `hook` on the parts in `ccl.assembly.PLUGIN_ORDER`: the divergence guard
        (as in `ccl run`: a diverged experience stops before its memory update), the
        memory, then the strategy's loss (which reads what was replayed)."""
        for part in self.parts.plugins() if self.parts is not None else [self.guard]:
            getattr(part, hook)(strategy, **kwargs)

    def _real_images(self, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, ...) images and (N,) labels of `classes` in the experience training now."""
        dataset = self._experience.dataset
        dataset = dataset.eval() if hasattr(dataset, "eval") else dataset  # no train augmentation in memory
        targets = torch.as_tensor(list(dataset.targets))
        rows = torch.nonzero(torch.isin(targets, torch.tensor(classes))).flatten().tolist()
        loader = DataLoader(Subset(dataset, rows), batch_size=512)
        images, labels = zip(*((batch[0], batch[1]) for batch in loader))
        return torch.cat(images), torch.cat(labels).long()


def _delegate(hook: str):
    def call(self, strategy, **kwargs):
        self._each(hook, strategy, **kwargs)
    call.__name__ = hook
    call.__doc__ = "Delegated to the memory, then the strategy's loss."
    return call


for _hook in (name for name in dir(SupervisedPlugin) if name.startswith(("before_", "after_"))):
    if _hook not in vars(CondensedReplay):  # the hooks above do more than delegate
        setattr(CondensedReplay, _hook, _delegate(_hook))


def _check_model(model: nn.Module, needs_features: bool, strategy: str | None) -> None:
    if hasattr(model, "embed"):
        return
    if strategy == "icarl":
        raise ValueError(f"strategy 'icarl' classifies by the model's features: {type(model).__name__} needs an "
                         "embed(x) -> (N, D) method")
    if needs_features and last_linear(model) is None:
        raise ValueError(f"CondensedReplay ranks images by the model's features: {type(model).__name__} needs an "
                         "embed(x) -> (N, D) method or an nn.Linear head (or use method='random')")


def _schedule(experience) -> list[list[int]]:
    """The classes of every experience of `experience`'s stream, if Avalanche exposes them."""
    try:
        stream = experience.origin_stream
        len(stream)  # a lazy stream (an online one) has no length: it is not read ahead
        return [list(e.classes_in_this_experience) for e in stream]
    except (AttributeError, TypeError, ValueError):  # none, or masked (Avalanche's MaskedAttributeError)
        return []


def _refuse_second_replay(plugin: CondensedReplay, strategy) -> None:
    """One replay a step: refuse, before any step, a strategy where another memory would
    also replay (Avalanche's `Replay` strategy, its `ReplayPlugin` and the other plugins
    and strategies that replay a buffer of their own, a second ccl memory): the second
    replay would silently double what the learner revisits."""
    from avalanche.training import plugins as avalanche_plugins
    from avalanche.training.storage_policy import ExemplarsBuffer
    from avalanche.training.supervised import GDumb, GenerativeReplay, Replay

    name = type(strategy).__name__
    if isinstance(strategy, (Replay, GDumb, GenerativeReplay)) or any(
            isinstance(value, ExemplarsBuffer) for value in vars(strategy).values()):  # DER, ER_ACE, ...: storage_policy
        raise ValueError(f"Avalanche's {name} strategy replays a memory of its own: with CondensedReplay every step "
                         "would replay twice; give CondensedReplay to Naive instead")
    replaying = tuple(getattr(avalanche_plugins, n) for n in REPLAYING_PLUGINS)
    for other in strategy.plugins:
        if other is plugin:
            continue
        if isinstance(other, (CondensedReplay, ReplayMemoryPlugin)):
            raise ValueError(f"a second ccl memory ({type(other).__name__}) beside CondensedReplay would replay twice "
                             "a step: keep one")
        if isinstance(other, replaying):
            raise ValueError(f"Avalanche's {type(other).__name__} replays a memory of its own: beside CondensedReplay "
                             "every step would replay twice; keep one of the two")


# Avalanche's plugins that add a buffer's samples (or generated ones) to the training steps
# (its UpdateNCMPlugin and UpdateFeCAMPlugin keep a buffer too, but only for class means).
REPLAYING_PLUGINS = ("ReplayPlugin", "BiCPlugin", "CoPEPlugin", "GDumbPlugin", "GSS_greedyPlugin",
                     "GenerativeReplayPlugin", "MIRPlugin", "RARPlugin")


def _refuse_oversized_memory(mem_size: int, mem_batch: int, experience, device) -> None:
    """A ValueError, before the experience trains, when `mem_size` of its images (as float32),
    or the `mem_batch` replayed with each minibatch, would not fit the machine's memory (or
    the device's): `mem_size=10**12` is a typo, not a memory the stream's images would
    silently cap, and `mem_batch=10**9` would ask the allocator for it at the first step."""
    image = experience.dataset[0][0]  # (C, H, W)
    for name, n in (("mem_size", mem_size), ("mem_batch", mem_batch)):
        try:
            refuse_oversized(n * image.numel() * 4, f"{name} {n} of {tuple(image.shape)} images", torch.device(device))
        except CclError as e:
            raise ValueError(str(e)) from None


def _method_settings(method: str, spec, settings: Settings) -> tuple[Any, FillerSettings]:
    """The method's settings and its filler's: the preset `ccl run` replays with (its
    `replay_preset`, else its own) with `settings` over it, split as `ccl run` splits them
    (`ccl.memory.memory_settings`), or the dataclass given (with the variant's defining
    values: DM is DataDAM without attention) and the filler's defaults."""
    cls = spec.settings
    if cls is None:  # as the Python API names it: a method, not a memory
        if settings:
            raise ValueError(f"method {method!r} takes no settings")
        return None, FillerSettings()
    if isinstance(settings, cls):  # the variant's defining values over it (none for a memory's own)
        fixed = METHODS.get(method).value.fixed if spec.method is not None else {}
        return dataclasses.replace(settings, **fixed), FillerSettings()
    if settings is None or isinstance(settings, dict):
        try:
            return memory_settings(method, spec.replay_preset, dict(settings or {}))
        except CclError as e:
            raise ValueError(str(e)) from None
    raise TypeError(f"settings of {method!r}: a dict or a {cls.__name__}, got {type(settings).__name__}")


def _settings(cls: type, settings: Settings, where: str) -> Any:
    if isinstance(settings, cls):
        return settings
    if settings is None or isinstance(settings, dict):
        try:
            return cfgmod.from_dict(cls, dict(settings or {}), where)
        except CclError as e:
            raise ValueError(str(e)) from None
    raise TypeError(f"{where}: settings are a dict or a {cls.__name__}, got {type(settings).__name__}")
