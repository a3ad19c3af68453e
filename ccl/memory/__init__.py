"""Replay memories: the registry `ccl run --memory` and `ccl list` read.

Each entry says how the runner treats it (`kind`) and, for on-device memories, which
filler fills the slots and which settings dataclass configures it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from ccl.condense import LoopCheckpoint
from ccl.condense.methods import METHODS, method_settings
from ccl.memory.batch import MemoryView, ReplayBatch
from ccl.memory.buffers import ClassBalancedReservoirBuffer, ReservoirBuffer
from ccl.memory.fillers import CondenseFiller, Filler, FillerSettings, HerdingFiller, RandomFiller, SoftHerdingFiller
from ccl.memory.online import OnlineReservoirMemoryPlugin
from ccl.memory.online_condensing import OnlineCondensingMemoryPlugin, OnlineCondensingSettings
from ccl.memory.plugin import AugmentPlugin, DeviceMemoryPlugin, MemoryNeeds, ReplayMemoryPlugin, ReservoirMemoryPlugin
from ccl.memory.slots import slots_per_class
from ccl.registry import Registry

KINDS = ("none", "device", "avalanche", "joint")
POLICIES = ("end", "stream")  # how an on-device memory is filled: at each experience's end, or from the stream


@dataclass(frozen=True)
class MemorySpec:
    kind: str                          # one of KINDS
    filler: type[Filler] | None = None
    settings: type | None = None       # dataclass of the method's settings, if any
    method: Callable | None = None     # a ccl.condense method, for CondenseFiller
    # end: class-balanced slots filled by `filler` when an experience ends (what condensation
    # needs); stream: one reservoir over the whole stream (the ER and DER papers' buffer)
    policy: str = "end"
    # the settings preset `ccl run` replays with when no --memory-config is given (None:
    # the method's own, configs/<name>.toml, which `ccl condense` and GDumb use)
    replay_preset: str | None = None
    # policy "stream": which row each stream sample takes (ccl.memory.buffers)
    buffer: type[ReservoirBuffer] = ReservoirBuffer
    # the keys of `FillerSettings` this memory takes beside its method's settings (a
    # preset and `--set` write both alike; `split_settings` parts them)
    filler_keys: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS or self.policy not in POLICIES:
            raise ValueError(f"memory kind {self.kind!r} / policy {self.policy!r}: not one of {KINDS} / {POLICIES}")

    @property
    def on_device(self) -> bool:
        """A DeviceMemoryPlugin: the strategies, stored dtypes and augmentations apply."""
        return self.kind == "device"

    @property
    def joint(self) -> bool:
        """No stream: all training data at once (the upper bound)."""
        return self.kind == "joint"

    @property
    def class_balanced(self) -> bool:
        """Slots shared out among the seen classes: a budget below the class count is an error."""
        return self.kind == "avalanche" or (self.on_device and self.policy == "end")

    @property
    def online(self) -> bool:
        """Runs on an online stream that hides experience boundaries: no memory, or one
        filled from the stream (one filled at an experience's end, Avalanche's included,
        needs to be told where it ends)."""
        return self.kind == "none" or (self.on_device and self.policy == "stream")

    def make_filler(self, device, settings: Any, progress: bool = True, checkpoint: LoopCheckpoint | None = None,
                    filler_settings: FillerSettings = FillerSettings()) -> Filler:
        if self.method is not None:
            return CondenseFiller(device, settings, self.method, progress, checkpoint, filler_settings)
        return self.filler(device, settings, progress)

    def recorded_settings(self, settings: Any, filler_settings: FillerSettings) -> dict[str, Any] | None:
        """The settings as one flat dict, as a preset writes them (a run's config.json):
        `split_settings` parts it again when the run resumes."""
        if settings is None:
            return None
        return {**dataclasses.asdict(settings), **{k: getattr(filler_settings, k) for k in self.filler_keys}}

    def make_plugin(self, *, mem_size: int, mem_batch: int, device, codec=None, augment=None, settings: Any = None,
                    progress: bool = True, real_images=None, schedule=None, stream_slots: bool = False,
                    batch_size: int = 32, needs: MemoryNeeds = MemoryNeeds(),
                    checkpoint: LoopCheckpoint | None = None, filler_settings: FillerSettings = FillerSettings(),
                    device_memory: type[DeviceMemoryPlugin] = DeviceMemoryPlugin, boundaries: bool = True):
        """The memory's Avalanche plugin, or None (no memory, joint training). `needs`: what
        the replay strategy asks of an on-device memory (its entry's `memory_needs`);
        `checkpoint`: how a condensing filler's iterations are saved and resumed;
        `filler_settings`: what a condensing filler does around its method;
        `device_memory`: the class of a class-balanced on-device memory (a subclass that
        hands its fillers a view of the learner, `ccl.assembly.FeatureMemory`); `boundaries`:
        False on an online stream that hides where experiences end (only an `online` memory
        runs there). Built by `ccl.assembly.build_replay`, for `ccl run` and
        `ccl.CondensedReplay` alike."""
        if not boundaries and not self.online:
            raise ValueError(f"a memory of kind {self.kind!r}, policy {self.policy!r} needs experience boundaries")
        if self.kind == "avalanche":
            from ccl.memory.reservoir import TimedReplayPlugin
            return TimedReplayPlugin(mem_size, batch_size, mem_batch)
        if not self.on_device:
            return None
        if self.policy == "stream" and self.settings is OnlineCondensingSettings:  # knows no boundary either way
            return OnlineCondensingMemoryPlugin(mem_size, mem_batch, device, codec, augment, needs, settings)
        if self.policy == "stream":
            plugin = ReservoirMemoryPlugin if boundaries else OnlineReservoirMemoryPlugin
            return plugin(mem_size, mem_batch, device, codec, augment, needs, self.buffer)
        filler = self.make_filler(device, settings, progress, checkpoint, filler_settings)
        return device_memory(mem_size, mem_batch, filler, real_images, device, codec, augment,
                             schedule=schedule, stream_slots=stream_slots, needs=needs)


MEMORIES: Registry[MemorySpec] = Registry("memory")
MEMORIES.register("none", "no replay: fine-tuning, the lower bound")(MemorySpec("none"))
MEMORIES.register("joint", "all training data at once, no stream: the upper bound")(MemorySpec("joint"))
MEMORIES.register("reservoir", "a uniform sample of the whole stream by reservoir sampling, with DER's logits "
                  "as each sample enters, on the device (the ER and DER papers' buffer, as mammoth's)")(
    MemorySpec("device", policy="stream"))
MEMORIES.register("class-balanced-reservoir", "class-balanced reservoir sampling of the stream (CBRS: no class above "
                  "its share, however imbalanced the stream), with DER's logits, on the device (2020)")(
    MemorySpec("device", policy="stream", buffer=ClassBalancedReservoirBuffer))
MEMORIES.register("online-datadam", "condensing while the stream passes: a share of the slots are summaries matched "
                  "every few steps to recent stream samples on the learner (DataDAM's terms, SSD's setting), the rest "
                  "a reservoir")(MemorySpec("device", policy="stream", settings=OnlineCondensingSettings))
MEMORIES.register("avalanche-reservoir", "Avalanche's own ReplayPlugin with a reservoir buffer (CPU-side)")(
    MemorySpec("avalanche"))
MEMORIES.register("random", "class-balanced random real images, on the device")(
    MemorySpec("device", RandomFiller))
MEMORIES.register("herding", "iCaRL herding on the learner's features, on the device")(
    MemorySpec("device", HerdingFiller))
MEMORIES.register("herding-soft", "herding's exemplars with the learner's logits as soft targets, on the device")(
    MemorySpec("device", SoftHerdingFiller))

# PAD replays with its learner-matched preset (docs/results.md, 2026-12-04); its expert
# preset stays for `ccl condense`, GDumb and GPUs.
_REPLAY_PRESETS = {"pad": "pad-replay"}
# Which filler settings each condensing memory takes: PAD takes the old classes as context
# (`ccl.condense.pad`); lasting_only needs DataDAM's nested matching.
_FILLER_KEYS = {"dm": ("lasting_only", "holdout"), "datadam": ("lasting_only", "holdout"),
                "mtt": ("memory_context", "holdout"), "pad": ("memory_context", "holdout")}
for _name in ("dm", "datadam", "mtt", "pad"):
    _method = METHODS.get(_name)
    MEMORIES.register(_name, f"condensed: {_method.description}")(
        MemorySpec("device", settings=_method.value.settings, method=_method.value.condense,
                   replay_preset=_REPLAY_PRESETS.get(_name), filler_keys=_FILLER_KEYS[_name]))


def split_settings(name: str, preset: str | None, overrides: dict[str, Any]) -> tuple[Any, FillerSettings]:
    """A condensing memory's settings from one preset (its method's own, configs/<name>.toml,
    when None) and one set of overrides, as a user writes them: (its method's settings,
    `ccl.condense.methods.method_settings`; its filler's, the keys of its entry's
    `filler_keys`). A key that is neither is an error, as in any preset."""
    from ccl.config import from_dict, preset_values, preset_where
    keys = MEMORIES.get(name).value.filler_keys
    settings = method_settings(name, preset, overrides, aside=keys)
    values = {**preset_values(preset or name, explicit=preset is not None), **overrides}
    return settings, from_dict(FillerSettings, {k: v for k, v in values.items() if k in keys},
                               preset_where(preset or name))


def memory_settings(name: str, preset: str | None, overrides: dict[str, Any]) -> tuple[Any, FillerSettings]:
    """Any memory's settings from one preset and one set of overrides, as `split_settings`
    (CclError on bad input): none for a memory that takes none; a memory's own settings
    (online-datadam's, `spec.method` None) from the overrides alone, as it has no preset
    file; a condensing memory's split into its method's and its filler's."""
    from ccl.config import from_dict
    from ccl.errors import CclError
    spec = MEMORIES.get(name).value
    if spec.settings is None:
        if overrides or preset:
            raise CclError(f"memory {name!r} takes no settings")
        return None, FillerSettings()
    if spec.method is None:
        if preset:
            raise CclError(f"memory {name!r} has no settings presets; give its settings with --set")
        return from_dict(spec.settings, overrides, f"memory {name}"), FillerSettings()
    return split_settings(name, preset, overrides)


__all__ = ["MEMORIES", "MemorySpec", "MemoryNeeds", "MemoryView", "ReplayBatch", "AugmentPlugin", "ReplayMemoryPlugin", "DeviceMemoryPlugin", "ReservoirMemoryPlugin",
           "OnlineReservoirMemoryPlugin", "OnlineCondensingMemoryPlugin", "OnlineCondensingSettings",
           "Filler", "FillerSettings", "slots_per_class", "split_settings", "memory_settings"]
