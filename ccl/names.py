"""The names the command line takes, with their one-line descriptions, read without loading
torch or Avalanche: `ccl list` and a misspelt name or setting are answered at once, where
importing the registries that hold the real entries takes seconds (ten and more on a busy
machine). tests/test_shipped_files.py fails when anything here drifts from those registries
(their names, order, descriptions and settings' fields), so adding an entry there means
adding its line here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ccl.config import read_toml
from ccl.errors import CclError, closest, unknown_name
from ccl.resources import resource_dir

# ccl.condense.methods.METHODS: `ccl condense --method`, and the condensing memories
CONDENSATION_METHODS = {
    "random": "random real images per class (the baseline)",
    "datadam": "DataDAM: attention and embedding matching on random networks (ICCV 2023)",
    "dm": "DM: DataDAM without the attention term (distribution matching)",
    "pad": "PAD: trajectory matching, difficulty-scheduled experts, deep parameters only (2024)",
    "mtt": "MTT: plain trajectory matching (PAD without its two filters)",
}
_DATADAM_SETTINGS = ("iterations", "real_epochs", "real_batch", "real_chunk", "p", "sam_weight", "mmd_weight",
                     "lr_images", "lr_images_side", "momentum", "network", "norm", "width", "depth", "dsa", "dsa_settings", "init",
                     "nested", "guide_weight", "soft_labels", "progress_every", "compile")
_PAD_SETTINGS = ("iterations", "syn_steps", "expert_epochs", "max_start_epoch", "min_start_epoch", "lr_img",
                 "lr_img_side", "lr_lr", "lr_init", "batch_syn", "alpha", "soft_labels", "lr_labels", "labels_momentum",
                 "expert", "num_experts", "expert_train_epochs", "expert_lr", "expert_batch", "expert_min_steps",
                 "scheduler", "schedule_init_ratio", "schedule_add_end", "schedule_rm_first", "schedule_rm_second",
                 "schedule_rm_ratio_first", "schedule_rm_ratio_second", "score_networks", "score_epochs", "width",
                 "depth", "norm", "dsa", "dsa_settings", "init", "recompute_steps", "progress_every", "max_recoveries")
# each method's settings (its dataclass's fields: `--set` keys); dm and mtt are variants
METHOD_SETTINGS = {"random": (), "datadam": _DATADAM_SETTINGS, "dm": _DATADAM_SETTINGS,
                   "pad": _PAD_SETTINGS, "mtt": _PAD_SETTINGS}

CONDENSING_MEMORIES = ("dm", "datadam", "mtt", "pad")  # each fills its slots with the method of its name
# ccl.memory.MEMORIES, in its order (`ccl list`, and `ccl compare`'s default grid)
MEMORIES = {
    "none": "no replay: fine-tuning, the lower bound",
    "joint": "all training data at once, no stream: the upper bound",
    "reservoir": "a uniform sample of the whole stream by reservoir sampling, with DER's logits as each sample "
                 "enters, on the device (the ER and DER papers' buffer, as mammoth's)",
    "class-balanced-reservoir": "class-balanced reservoir sampling of the stream (CBRS: no class above its share, "
                                "however imbalanced the stream), with DER's logits, on the device (2020)",
    "online-datadam": "condensing while the stream passes: a share of the slots are summaries matched every few "
                      "steps to recent stream samples on the learner (DataDAM's terms, SSD's setting), the rest a "
                      "reservoir",
    "avalanche-reservoir": "Avalanche's own ReplayPlugin with a reservoir buffer (CPU-side)",
    "random": "class-balanced random real images, on the device",
    "herding": "iCaRL herding on the learner's features, on the device",
    "herding-soft": "herding's exemplars with the learner's logits as soft targets, on the device",
    **{name: f"condensed: {CONDENSATION_METHODS[name]}" for name in CONDENSING_MEMORIES},
}
# ccl.memory.MEMORIES' filler_keys: a condensing memory's settings beside its method's (`ccl run` only)
FILLER_SETTINGS = {"dm": ("lasting_only", "holdout"), "datadam": ("lasting_only", "holdout"),
                   "mtt": ("memory_context", "holdout"), "pad": ("memory_context", "holdout")}
# each memory's settings (`--set` keys): a condensing memory's are its method's and its filler's; the
# others take none
MEMORY_SETTINGS = {name: METHOD_SETTINGS[name] + FILLER_SETTINGS[name] if name in CONDENSING_MEMORIES else ()
                   for name in MEMORIES}
MEMORY_SETTINGS["online-datadam"] = ("share", "every", "iterations", "window", "lr_images", "p", "sam_weight",
                                     "mmd_weight", "init_noise")  # ccl.memory.online_condensing

# ccl.strategies.STRATEGIES, in its order
STRATEGIES = {
    "er": "experience replay: one cross-entropy over stream and memory samples",
    "a-gem": "averaged gradient episodic memory: steps that would raise the memory's loss are projected (2019)",
    "bic": "BiC: distillation to the previous learner and a bias layer for the newest classes fitted on the "
           "memory (2019)",
    "der": "dark experience replay: MSE to the logits stored with memory images (2020)",
    "der++": "DER plus cross-entropy on a second memory batch (2020)",
    "er-ace": "ER with asymmetric cross-entropy (Caccia et al. 2022)",
    "gdumb": "GDumb: at each step a fresh learner trained on the memory alone (2020)",
    "icarl": "iCaRL: distillation to the previous learner, nearest-mean-of-memory classifier (2017)",
}
# each strategy's own settings (its registry entry's dataclass fields, `--strategy-set` keys)
STRATEGY_SETTINGS = {"er": ("temperature",), "a-gem": (), "bic": ("temperature", "bias_steps", "bias_lr"),
                     "der": ("alpha", "beta", "temperature"), "der++": ("alpha", "beta", "temperature"),
                     "er-ace": ("temperature",),
                     "gdumb": ("epochs", "lr", "min_lr", "schedule", "restart_epochs", "warmup_epochs", "batch_size",
                               "momentum", "weight_decay", "clip"),
                     "icarl": ()}

DATASETS = ("digits", "cifar10", "cifar100", "folder")  # ccl.data.DATASETS
LEARNERS = ("convnet", "resnet18")  # what ccl.models.build_learner builds
NORMS = ("instance", "batch", "none")  # the ConvNet's normalisations


def scenarios() -> dict[str, str]:
    """The shipped scenarios' descriptions by name, read from their files (as
    ccl.data.scenarios reads them, without checking them against the data sets)."""
    return {path.stem: str(read_toml(path).get("description", ""))
            for path in sorted(resource_dir("scenarios").glob("*.toml"))}


def scenario_dataset(name: str) -> str:
    """The data set a shipped scenario names (split-cifar10 -> cifar10)."""
    return str(read_toml(resource_dir("scenarios") / f"{name}.toml").get("dataset"))


def memory_presets() -> list[str]:
    """The shipped memory presets' names (configs/*.toml: `--memory-config NAME`)."""
    return sorted(p.stem for p in resource_dir("configs").glob("*.toml"))


def check_name(kind: str, name: Any, names: Iterable[str]) -> None:
    if name is not None and name not in names:
        raise unknown_name(kind, name, names)


def check(values: dict[str, Any]) -> None:
    """The names and paths among run `values` that can be checked in milliseconds; the
    runner checks everything again, with the data, before any folder exists."""
    check_name("scenario", values.get("scenario"), scenarios())
    for name in str(values.get("memory") or "").split(","):
        check_name("memory", name.strip() or None, MEMORIES)
    for name in str(values.get("strategy") or "").split(","):
        check_name("strategy", name.strip() or None, STRATEGIES)
    check_memory_preset(values.get("memory_config"))
    data_dir = values.get("data_dir")
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise CclError(f"--data-dir {data_dir}: no such folder (to download a data set into it, create it first)")


def check_memory_preset(preset: Any) -> None:
    """`--memory-config`: a TOML file that exists, or a shipped preset's name."""
    if preset is None:
        return
    if str(preset).endswith(".toml"):
        if not Path(preset).is_file():
            raise CclError(f"--memory-config {preset}: no such file")
        return
    check_name("memory preset", preset, memory_presets())


def check_settings(flag: str, kind: str, chosen: Iterable[str], settings: dict[str, tuple[str, ...]],
                   given: Iterable[str]) -> None:
    """Each setting in `given` must be one of at least one of the `chosen` memories,
    strategies or methods (`settings`: their settings by name), as `--set` and
    `--strategy-set` go to those that have the key. The values' types are checked by the
    settings dataclasses, once loaded."""
    chosen = list(chosen)
    known = list(dict.fromkeys(key for name in chosen for key in settings[name]))
    for key in given:
        if key in known:
            continue
        if len(chosen) == 1 and not known:
            raise CclError(f"{kind} {chosen[0]!r} takes no settings (given {flag} {key}=...)")
        guess = closest(key, known)
        hint = f" (did you mean {guess}?)" if guess is not None else ""
        if len(chosen) == 1:
            raise CclError(f"{flag} {key}: {kind} {chosen[0]!r} has no such setting{hint}; its settings: "
                           f"{', '.join(known)}")
        kinds = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
        raise CclError(f"{flag} {key}: none of the {kinds} {', '.join(chosen)} has a setting {key!r}{hint}; "
                       f"their settings: {', '.join(known)}")
