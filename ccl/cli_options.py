"""Options and helpers shared by the `ccl` commands (run, compare, condense, ...)."""
from __future__ import annotations

import functools
import shutil
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import click

from ccl import names as known
from ccl.config import parse_override, read_toml
from ccl.errors import CclError, closest
from ccl.resources import run_preset
from ccl.run_config import (MEM_AUGMENTS, MEM_DTYPE_NAMES, PROTOCOLS, STRATEGY_RUN_KEYS, STREAM_AUGMENTS,
                            chosen_strategies, given_config, is_own_setting, strategy_table_name, strategy_tables,
                            with_strategy_table)

ERROR_WIDTH = 100  # columns at most for a wrapped error: longer lines are hard to read on a wide terminal


def error_text(message: str, width: int | None) -> str:
    """`error: message`, as one line for logs and pipes (`width` None: grep finds it whole),
    or on a terminal `width` columns wide wrapped between words, with the lines after
    the first indented (a list of 40 setting names would otherwise run off the screen)."""
    text = f"error: {message}"
    if width is None:
        return text
    return "\n".join(textwrap.fill(line, width=max(40, min(width, ERROR_WIDTH)), subsequent_indent="  ",
                                   break_long_words=False, break_on_hyphens=False) for line in text.splitlines())


def _error(message: str) -> None:
    width = shutil.get_terminal_size().columns if sys.stderr.isatty() else None
    click.echo(error_text(message, width), err=True)


class Choice(click.Choice):
    """click's Choice whose refusal names the closest choice (`--model resnet` -> resnet18)."""

    def get_invalid_choice_message(self, value: Any, ctx: click.Context | None) -> str:
        message = super().get_invalid_choice_message(value, ctx)
        guess = closest(value, [str(c) for c in self.choices])
        return f"{message} Did you mean {guess!r}?" if guess is not None else message


def friendly_errors(fn):
    """Bad input ends in one clear line, not a traceback; so does what the system refuses
    (a full disk, a path that is a file, a folder without write permission)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CclError as e:
            _error(str(e))
            sys.exit(2)
        except KeyboardInterrupt as e:  # as a signal ends a run (click would say "Aborted!" and exit 1)
            click.echo("\ninterrupted", err=True)
            sys.exit(128 + getattr(e, "signum", signal.SIGINT))
        except OSError as e:
            if e.strerror is None:
                raise  # not the system's refusal: a bug, keep the traceback
            where = f"{e.filename}: " if e.filename else ""
            _error(f"{where}{e.strerror}")
            sys.exit(2)
    return wrapper


def writable_folder(path: Path, flag: str) -> Path:
    """`path` as a folder ccl can write into or create, checked before any work starts
    (and creating nothing: bad input leaves nothing behind); a CclError naming the flag
    otherwise."""
    import os
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the nearest part of the path that exists
    if not existing.is_dir():
        what = "is a file, not a folder" if existing == path else f"cannot create it ({existing} is a file)"
        raise CclError(f"{flag} {path}: {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CclError(f"{flag} {path}: no permission to write in {existing}")
    return path


def int_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise CclError(f"expected comma-separated integers, got {text!r}") from None


RUN_FLAGS = ("strategy", "protocol", "tensorboard", "wandb", "scenario", "memory", "mem_size", "mem_batch", "mem_dtype", "mem_augment", "stream_augment", "stream_slots", "finetune_epochs", "seed", "epochs", "batch_size", "lr",
             "model", "width", "depth", "norm", "device", "data_dir", "experiences", "train_per_class", "test_per_class",
             "memory_config", "checkpoint_every", "online", "reveal_boundaries")


def run_options(fn, mem_size=click.option("--mem-size", type=int, help="images in memory, all classes together [200]")):
    """Options shared by `run` and `compare`; None means "not given" (config file or default).
    `mem_size`: the --mem-size option (compare's takes a list of sizes)."""
    opts = [
        click.option("--scenario", help="scenario name (see `ccl list`); default split-digits"),
        mem_size,
        click.option("--mem-batch", type=int, help="memory samples appended to every minibatch [32; online 10]"),
        click.option("--strategy", help=f"how the loss uses memory samples: {', '.join(known.STRATEGIES)} "
                                         "(see `ccl list`) [er]"),
        click.option("--protocol", type=Choice(list(PROTOCOLS)),
                     help="replay: new data + memory; gdumb: a fresh learner on the memory alone [replay]"),
        click.option("--tensorboard", type=click.Path(path_type=str), help="also log to TensorBoard in this folder"),
        click.option("--wandb", metavar="PROJECT", help="also log to this Weights & Biases project"),
        click.option("--mem-dtype", type=Choice(MEM_DTYPE_NAMES),
                     help="how memory images are stored [float32]"),
        click.option("--mem-augment", type=Choice(MEM_AUGMENTS),
                     help="dsa: augment memory images afresh each time the learner trains on them; crop-flip: "
                          "as mammoth replays; auto: dsa for the on-device memories, else none [auto]"),
        click.option("--stream-augment", type=Choice(STREAM_AUGMENTS),
                     help="augment the stream samples: crop-flip pads by 4, crops back and flips at "
                          "random (the field's CIFAR default) [none]"),
        click.option("--stream-slots/--no-stream-slots", default=None,
                     help="replay: new classes' slots hold a reservoir of their samples while they "
                          "stream (as in the ER, ER-ACE and DER papers); the memory's filler takes "
                          "them over at the experience's end [on for er-ace, else off]"),
        click.option("--finetune-epochs", type=int,
                     help="replay: then this many epochs on the memory alone at lr/10, class-balanced [0]"),
        click.option("--online", is_flag=True, default=None,
                     help="online continual learning: each experience streams once in minibatches of "
                          "--batch-size, and the memory and strategy are told no boundary (used only to "
                          "evaluate); reservoir or class-balanced-reservoir, er, er-ace, der or der++ [off]"),
        click.option("--reveal-boundaries", is_flag=True, default=None,
                     help="with --online: tell the memory and strategy where experiences end, so memories "
                          "filled at an experience's end run too [off]"),
        click.option("--epochs", type=int, help="training epochs per experience [5; split-digits 10; online 1]"),
        click.option("--batch-size", type=int, help="current-experience samples per minibatch [32; online 10]"),
        click.option("--lr", type=float, help="learner learning rate [0.01]"),
        click.option("--model", type=Choice(known.LEARNERS), help="learner [convnet]"),
        click.option("--width", type=int, help="ConvNet width [128]"),
        click.option("--depth", type=int, help="ConvNet depth [3; split-digits 2]"),
        click.option("--norm", type=Choice(known.NORMS), help="ConvNet norm [instance]"),
        click.option("--device", help="auto | cpu | cuda | cuda:N [auto]"),
        click.option("--data-dir", type=click.Path(path_type=str),
                     help="data folder [$CCL_DATA_DIR, else ~/.cache/ccl/data]"),
        click.option("--download", is_flag=True,
                     help="download the data set with torchvision when it is not in --data-dir [off]"),
        click.option("--no-download", is_flag=True, help="never download (the default; kept for older scripts)"),
        click.option("--experiences", type=int, help="number of experiences [the scenario's]"),
        click.option("--class-order", help="comma-separated class indices [drawn from the seed]"),
        click.option("--train-per-class", type=int, help="keep the first N training images per class"),
        click.option("--test-per-class", type=int, help="test on the first N test images per class (quick runs)"),
        click.option("--config", "config_file", type=click.Path(path_type=Path),
                     help="TOML file of run settings (keys as the flags, with underscores), or a run "
                          "preset's name (see `ccl list`: cpu-quick, cpu-protocol, ...)"),
        click.option("--memory-config", help="memory settings preset (name in configs/) or TOML file"),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="override one memory setting, e.g. --set iterations=200 (repeatable)"),
        click.option("--strategy-set", "strategy_overrides", multiple=True, metavar="KEY=VALUE",
                     help="override one strategy hyperparameter, e.g. --strategy-set alpha=0.2 (repeatable)"),
        click.option("--checkpoint-every", type=float, metavar="SECONDS",
                     help="checkpoint inside an experience or a condensation this often, for --resume; "
                          "0: only at each experience's end [300]"),
        click.option("--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
                     help="where run folders are created"),
        click.option("--quiet", is_flag=True, help="no progress bars"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def config_values(flags: dict, config_file: Path | None, overrides: tuple[str, ...],
                  no_download: bool, class_order: str | None) -> tuple[dict, dict[str, dict]]:
    """Run settings: config file, then flags given on the command line; and the preset's
    per-strategy tables (`[strategies.NAME]`) under them, the command line first.

    With one strategy its table is laid over the settings returned, and the tables are
    empty; with `--strategy a,b` (ccl compare's axis) the tables of a and b come back, each
    for that strategy's cells. A flag that replaces a table's value says so in one line.
    """
    values = dict(read_toml(run_preset(config_file))) if config_file else {}
    tables = strategy_tables(values.pop("strategies", {}), str(config_file))
    values.update({k: v for k, v in flags.items() if k in RUN_FLAGS and v is not None})
    if flags.get("download") and no_download:
        raise CclError("--download and --no-download contradict each other: give one")
    if flags.get("download"):
        values["download"] = True
    elif no_download:
        values["download"] = False
    if class_order is not None:
        values["class_order"] = int_list(class_order)
    for key in ("memory_settings", "strategy_settings"):
        if not isinstance(values.get(key, {}), dict):
            raise CclError(f"{config_file}: {key} should be a table of settings (key = value), "
                           f"not {type(values[key]).__name__}")
    settings = dict(values.pop("memory_settings", {}))
    settings.update(dict(parse_override(o) for o in overrides))
    values["memory_settings"] = settings
    hyper = dict(values.pop("strategy_settings", {}))
    given_hyper = dict(parse_override(o) for o in flags.get("strategy_overrides") or ())
    hyper.update(given_hyper)
    values["strategy_settings"] = hyper
    # what the command line set, by (run or own, key), with the flag that set it: it wins over
    # the preset's tables (--lr the run's lr, --strategy-set lr=... a strategy's own, GDumb's)
    given = {(False, k): (f"--{k.replace('_', '-')} {flags[k]}", flags[k])
             for k in STRATEGY_RUN_KEYS if flags.get(k) is not None}
    given.update({(True, k): (f"--strategy-set {k}={v}", v) for k, v in given_hyper.items()})
    return _with_strategy_tables(values, tables, given, config_file)


def _with_strategy_tables(values: dict, tables: dict[str, dict], given: dict[tuple[bool, str], tuple[str, object]],
                          config_file: Path | None) -> tuple[dict, dict[str, dict]]:
    """`config_values`' answer: the tables of the strategies `values` run, less the keys
    the command line gave (`given`: (whether a strategy's own setting, key) -> its flag and
    value), each checked as the run's own values now, before torch loads; a single
    strategy's laid over `values`."""
    running = chosen_strategies(values)
    tables = {s: tables[s] for s in running if s in tables}  # a preset may name more strategies than run
    for (own, key), (flag, value) in given.items():
        replaced = [f"{t[key]} for {s}" for s, t in tables.items()
                    if key in t and is_own_setting(s, key) == own and t[key] != value]
        if replaced:
            click.echo(f"note: {flag} overrides the preset's {key} {', '.join(replaced)}", err=True)
    tables = {s: {k: v for k, v in t.items() if (is_own_setting(s, k), k) not in given} for s, t in tables.items()}
    for strategy, table in tables.items():
        try:
            given_config(**{**with_strategy_table(values, table, strategy), "strategy": strategy})
        except CclError as e:
            given_config(**{**values, "strategy": strategy})  # fails on its own first when the table is not to blame
            raise CclError(f"{config_file}: {strategy_table_name(strategy)}: {str(e).removeprefix('run: ')}") from None
    if len(running) == 1:
        return with_strategy_table(values, tables.get(running[0], {}), running[0]), {}
    return values, tables


def check_settings(values: dict, memories: list[str]) -> None:
    """The keys of `--set` and `--strategy-set` (and a config file's tables of them) against
    the light name lists, before torch loads: each must be a setting of one of `memories`
    (those that run) and of one of the strategies `values` run. Their values are checked
    with the settings dataclasses, once loaded."""
    known.check_settings("--set", "memory", memories, known.MEMORY_SETTINGS, values.get("memory_settings") or {})
    known.check_settings("--strategy-set", "strategy", chosen_strategies(values), known.STRATEGY_SETTINGS,
                         values.get("strategy_settings") or {})
