"""`ccl`: the command line. Every command turns CclError into one line and exit code 2."""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys

# Idle OpenMP threads sleep instead of spinning: with the default spin-wait, a second
# busy process on a small machine made DataDAM iterations 10-20x slower (measured on 2
# cores). Set before torch loads its OpenMP runtime; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import click  # noqa: E402

from ccl.cli_compare import compare, report  # noqa: E402
from ccl import names as known  # noqa: E402
from ccl.cli_options import (Choice, check_settings, config_values, friendly_errors, int_list, run_options,  # noqa: E402
                             writable_folder)
from ccl.errors import CclError  # noqa: E402


def _print_version(ctx: click.Context, param, value: bool) -> None:
    """`ccl --version`: the installed package's version, read from its metadata (no torch)."""
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import PackageNotFoundError, version
    try:
        click.echo(f"ccl {version('ccl')}")
    except PackageNotFoundError:  # run from a source tree that was never installed
        click.echo("ccl: version unknown (not installed; `pip install .` records it)")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print the version and exit.")
def main():
    """ccl: class-incremental learning with a condensed replay memory."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ccl").setLevel(logging.INFO)


def _experience_line(i: int, results: dict) -> None:
    click.echo(f"experience {i}: seen-class accuracy {results['seen_accuracy'][-1]:.3f}, all classes "
               f"{results['average_accuracy'][-1]:.3f}, forgetting {results['forgetting'][-1]:.3f} "
               f"(train {results['train_seconds'][-1]:.0f} s, memory {results['memory_update_seconds'][-1]:.0f} s, "
               f"eval {results['eval_seconds'][-1]:.0f} s)")


def _ago(saved: float) -> str:
    """How long ago the time `saved` (seconds since the epoch) was, in words."""
    import time

    from ccl.units import duration
    return f"{duration(round(time.time() - saved))} ago"  # whole seconds: an age, not an estimate


@main.command()
@click.option("--memory", help="replay memory (see `ccl list`) [random]")
@click.option("--seed", type=int, help="seed of everything random [0]")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path),
              help="continue an interrupted run folder from its last checkpoint")
@run_options
@friendly_errors
def run(config_file, overrides, no_download, class_order, runs_dir, quiet, resume_dir, **flags):
    """Train on a class-incremental stream with a replay memory; write a run folder."""
    from ccl.io import folder_holder
    from ccl.run_config import given_config
    if resume_dir is not None and not (Path(resume_dir) / "config.json").exists():  # as resume_run says, at once
        raise CclError(f"{resume_dir}: not a run folder (no config.json)")
    if resume_dir is not None and (holder := folder_holder(resume_dir)):  # before loading torch: at once
        raise CclError(f"{resume_dir}: in use by another ccl process (pid {holder}, a run); "
                       "wait for it to finish or stop it")
    if resume_dir is None:
        writable_folder(runs_dir, "--runs-dir")
        # one strategy runs: the preset's table for it ([strategies.NAME]) is in the values already
        values, _ = config_values(flags, config_file, overrides, no_download, class_order)
        known.check(values)
        given = given_config(**values)  # the values' own checks, before torch loads: one line at once
        if values.get("memory_config") is not None and not known.MEMORY_SETTINGS[given.memory]:
            raise CclError(f"memory {given.memory!r} takes no settings (given --memory-config "
                           f"{values['memory_config']})")
        check_settings(values, [given.memory])
    from ccl.report import summary_table
    from ccl.guards import Interrupted, signals_raise_interrupted
    from ccl.experiment import cpu_advice, device_description, make_config, new_run_dir, prepare
    from ccl.runner import resume_run, run as run_experiment

    try:
        if resume_dir is not None:
            def header(run_dir, first, total, position=None):
                if position is not None:
                    where = (f"epoch {position['epoch']}, iteration {position['iteration']}"
                             if position["phase"] == "training" else
                             f"condensing its memory, iteration {position['condensation']['iteration']}")
                    click.echo(f"resuming {run_dir} at experience {first}, {where} (saved {_ago(position['saved'])})")
                else:
                    click.echo(f"resuming {run_dir} at experience {first} of {total} (experiences 0-{first - 1} "
                               "were done)" if first else f"resuming {run_dir} from its start (no experience was done)")
            run_dir, ran = resume_run(resume_dir, progress=not quiet, on_experience=_experience_line, on_start=header)
            if not ran:
                click.echo(f"{run_dir}: this run has already finished")
                click.echo(summary_table(run_dir))
                if not (run_dir / "memory.png").exists():  # a signal during its final write came first
                    from ccl.report import write_memory_picture
                    write_memory_picture(run_dir)
                return
        else:
            cfg = make_config(**values)
            prepared = prepare(cfg)
            # From the folder on, SIGINT and SIGTERM leave it a status (`interrupted`), never none;
            # before it (loading the data) a Ctrl-C simply stops.
            with signals_raise_interrupted():
                run_dir = new_run_dir(runs_dir, cfg)
                click.echo(f"{cfg.scenario}: {len(prepared.experience_classes)} experiences, classes in order "
                           f"{prepared.order}; memory {cfg.memory} ({cfg.mem_size} images), strategy {cfg.strategy}, "
                           f"on {device_description(prepared.device)}; run folder {run_dir}")
                if advice := cpu_advice(prepared):
                    click.echo(advice)
                unused = [f"--{k.replace('_', '-')}" for k in ("epochs", "lr", "batch_size") if flags.get(k) is not None]
                if unused and prepared.strategy.own_training is not None:  # GDumb's fresh learner
                    click.echo(f"note: {', '.join(unused)} do not train the fresh learner of {cfg.strategy}, which "
                               "has its own settings (--strategy-set epochs=N, lr=..., batch_size=...)", err=True)
                run_dir = run_experiment(prepared, progress=not quiet, run_dir=run_dir, on_experience=_experience_line)
    except KeyboardInterrupt as e:
        folder = getattr(e, "run_dir", resume_dir)
        if not getattr(e, "finished", False):
            click.echo(_interrupted_line(folder), err=True)
            sys.exit(128 + (e.signum if isinstance(e, Interrupted) else 2))
        run_dir = folder  # the signal came during the run's final write: it finished, so it is reported
    table = summary_table(run_dir)
    # On a terminal the experience lines were progress and the table sums them up; in a log
    # file they are the record, and the table would print each experience a second time.
    click.echo(table if sys.stdout.isatty() else table.splitlines()[-1])
    from ccl.report import write_memory_picture
    write_memory_picture(run_dir)  # a picture of what the learner replays, class by class
    click.echo(f"run folder: {run_dir}")


def _interrupted_line(folder: Path | None) -> str:
    """What an interrupted run leaves: the resume command only where a checkpoint was
    saved (a folder without one would start again from nothing)."""
    from ccl.checkpoint import CHECKPOINT
    if folder is None:
        return "\ninterrupted before the run started: nothing to resume"
    if not (Path(folder) / CHECKPOINT).exists():
        return f"\ninterrupted before its first checkpoint: nothing to resume ({folder} holds its configuration only)"
    return f"\ninterrupted; resume with: ccl run --resume {folder}"


@main.command(name="list")
def list_cmd():
    """List scenarios, memories, replay strategies and the shipped presets."""
    from ccl.resources import resource_dir, run_presets
    # from the light name lists (ccl.names): the registries would load torch and Avalanche
    for title, described in (("scenarios", known.scenarios()), ("memories", known.MEMORIES),
                              ("strategies", known.STRATEGIES)):
        click.echo(f"{title}:")
        for name, description in described.items():
            click.echo(f"  {name:<16} {description}")
    for title, paths in (("memory presets (--memory-config NAME)", sorted(resource_dir("configs").glob("*.toml"))),
                         ("run presets (--config NAME)", list(run_presets().values()))):
        click.echo(f"{title}:")
        width = max([20, *(len(p.stem) for p in paths)])  # the summaries in one column
        for path in paths:
            click.echo(f"  {path.stem:<{width}} {_preset_summary(path)}")


def _preset_summary(path: Path) -> str:
    """A preset's first comment line, up to its first sentence's end or colon (the line
    usually breaks mid-sentence)."""
    first = next((line for line in path.read_text().splitlines() if line.strip()), "")
    if not first.startswith("#"):
        return ""
    text = first.lstrip("# ").rstrip()
    return re.split(r"(?<!\bal)\. |: ", text, maxsplit=1)[0].rstrip(".")  # "et al. " ends no sentence


def _dataset_name(name: str) -> str:
    """A data set name, or the data set of the scenario so named (split-cifar10 -> cifar10);
    checked against the light name lists, so that a typo is answered before torch loads."""
    scenarios = known.scenarios()
    if name in scenarios:
        return known.scenario_dataset(name)
    known.check_name("data set", name, [*known.DATASETS, *scenarios])
    return name


def _dataset_options(fn):
    for opt in reversed([
        click.option("--dataset", "--scenario", "dataset", default="cifar10", show_default=True,
                     help="data set (digits, cifar10, cifar100, folder) or a scenario naming one (split-cifar10)"),
        click.option("--data-dir", type=click.Path(path_type=str), help="data folder [$CCL_DATA_DIR]"),
        click.option("--download/--no-download", default=False,
                     help="download the data set with torchvision when it is not in --data-dir [off]"),
        click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N"),
        click.option("--seed", type=int, default=0, show_default=True),
    ]):
        fn = opt(fn)
    return fn


@main.command()
@click.option("--method", type=Choice(list(known.CONDENSATION_METHODS)), default="datadam", show_default=True,
              help="condensation method")
@click.option("--ipc", type=int, default=10, show_default=True, help="synthetic images per class")
@click.option("--classes", help="comma-separated classes to condense [all]")
@click.option("--train-per-class", type=int, help="condense from the first N training images per class")
@click.option("--memory-config", "--config", "preset",
              help="settings preset (name in configs/) or TOML file [the method's]; as `ccl run --memory-config`")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override one setting (repeatable)")
@click.option("--init-set", type=click.Path(path_type=Path),
              help="start from this set file's images (IPC of each class, as `ccl condense` writes them) "
                   "instead of the method's own start")
@click.option("--out", type=click.Path(path_type=Path), help="output .pt [sets/<dataset>-<method>-ipc<N>-s<seed>.pt]")
@click.option("--quiet", is_flag=True, help="no progress bar")
@_dataset_options
@friendly_errors
def condense(method, ipc, classes, train_per_class, preset, overrides, init_set, out, quiet, dataset, data_dir,
             download, device, seed):
    """Condense a data set's training images into IPC synthetic images per class."""
    from ccl.config import parse_override
    # What can be checked without the data, first: these answers take milliseconds, where
    # loading torch and the methods takes seconds.
    if ipc < 1:
        raise CclError(f"--ipc must be at least 1, got {ipc}")
    given = dict(parse_override(o) for o in overrides)
    known.check_memory_preset(preset)
    run_only = [k for k in given if k in known.FILLER_SETTINGS.get(method, ())]
    if run_only:  # a preset made for `ccl run` may carry them: there they are left out, given here refused
        raise CclError(f"{', '.join(run_only)}: a setting of the replay memory around its method, for `ccl run` only "
                       "(`ccl condense` has no learner, old classes or cuts)")
    known.check_settings("--set", "condensation method", [method], known.METHOD_SETTINGS, given)
    dataset = _dataset_name(dataset)
    wanted = int_list(classes)
    if init_set is not None and method == "random":
        raise CclError("--init-set is a start for a method that optimises images; random has none")
    if init_set is not None and not init_set.exists():
        raise CclError(f"{init_set}: file not found")

    import math
    import time

    import torch

    from ccl.condense import Condensed
    from ccl.condense.methods import METHODS, method_settings
    from ccl.config import to_dict
    from ccl.data import load_dataset
    from ccl.io import save_torch
    from ccl.report import save_image_grid
    from ccl.training import pick_device, refuse_oversized, seed_everything

    entry = METHODS.get(method).value
    settings = method_settings(method, preset, given, aside=known.FILLER_SETTINGS.get(method, ()))
    # Without --classes the set names them: its classes are checked against the data's below.
    init = None if init_set is None else _initial_set(init_set, dataset, wanted, ipc)
    if getattr(settings, "network", None) == "learner":
        raise CclError("network = \"learner\" matches on the architecture of the model ccl.CondensedReplay is "
                       "given; `ccl condense` has none (use network = \"convnet\")")
    # A preset made for `ccl run` may match the replay learner's features; standalone there
    # is no learner, so the guide is off (asked for explicitly, it is an error).
    if getattr(settings, "guide_weight", 0.0) > 0:
        if "guide_weight" in given:
            raise CclError("guide_weight needs the replay learner: it applies to `ccl run` only")
        settings = dataclasses.replace(settings, guide_weight=0.0)
    dev = pick_device(device)
    data = load_dataset(dataset, data_dir, download)
    if train_per_class:
        data = data.first_per_class(train_per_class)
    wanted = wanted or list(range(data.num_classes))
    if not set(wanted) <= set(range(data.num_classes)):
        raise CclError(f"--classes must be within 0..{data.num_classes - 1}")
    synthetic = ipc * len(wanted)
    refuse_oversized(synthetic * math.prod(data.shape) * 4, f"--ipc {ipc} ({synthetic:,} float images)", dev)
    counts = {c: int((data.train_y == c).sum()) for c in wanted}
    fewest = min(wanted, key=counts.get)
    if ipc > counts[fewest]:  # a set is a summary of the real images: never more of them
        raise CclError(f"--ipc {ipc} is more than the {counts[fewest]} training images of class {fewest}")
    real, labels = data.normalise(data.train_x), torch.from_numpy(data.train_y)
    mask = torch.isin(labels, torch.tensor(wanted))
    if init is not None and tuple(init[0].shape[1:]) != tuple(data.shape):
        raise CclError(f"{init_set}: images of {tuple(init[0].shape[1:])}, {dataset}'s are {tuple(data.shape)}")
    if init is not None and len(init[1]) != ipc * len(wanted):
        raise CclError(f"{init_set}: holds classes {','.join(map(str, init[1].unique().tolist()))}; condensing all "
                       f"{len(wanted)} classes of {dataset} needs {ipc} image(s) of each (or name them with --classes)")
    seed_everything(seed)
    stats: dict = {}
    start = time.perf_counter()
    result = entry.condense(real[mask], labels[mask], {c: ipc for c in wanted}, dev, settings,
                            init=init, progress=not quiet, stats=stats)
    images, image_labels = result
    seconds = time.perf_counter() - start
    out = out or Path("sets") / f"{dataset}-{method}-ipc{ipc}-s{seed}.pt"
    soft = result.soft_targets(data.num_classes) if isinstance(result, Condensed) else None  # learned logits
    save_torch(out, {"images": images.cpu(), "labels": image_labels.cpu(),
                     **({"soft_labels": soft.cpu()} if soft is not None else {}), "dataset": dataset, "method": method,
                     "ipc": ipc, "seed": seed, "settings": to_dict(settings), "stats": stats, "seconds": seconds,
                     "mean": data.mean, "std": data.std, "class_names": data.classes,
                     "train_per_class": train_per_class, "init_set": None if init_set is None else str(init_set)})
    save_image_grid(images.cpu(), image_labels.cpu(), data.mean, data.std, data.classes, out.with_suffix(".png"),
                    title=f"{dataset} {method} IPC {ipc}")
    click.echo(f"{method}: {len(images)} images in {seconds:.0f} s -> {out} (grid: {out.with_suffix('.png')})")


@main.command()
@click.argument("set_file", type=click.Path(path_type=Path))
@click.option("--epochs", type=int, default=300, show_default=True, help="training epochs per network (papers: 1000+)")
@click.option("--networks", type=int, default=3, show_default=True, help="fresh networks to average over")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override one evaluation setting")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--data-dir", type=click.Path(path_type=str), help="data folder [$CCL_DATA_DIR]")
@click.option("--download/--no-download", default=False,
              help="download the data set with torchvision when it is not in --data-dir [off]")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@friendly_errors
def evaluate(set_file, epochs, networks, overrides, quiet, data_dir, download, device, seed):
    """Train fresh ConvNets on a synthetic set alone; print test accuracy (mean and std)."""
    if not set_file.exists():  # as load_torch says it, before torch loads
        raise CclError(f"{set_file}: file not found")
    import torch

    from ccl.condense.evaluate import EvalSettings, evaluate_synthetic
    from ccl.config import from_dict, parse_override, to_dict
    from ccl.data import load_dataset
    from ccl.fields import soft_targets_problem
    from ccl.io import write_json
    from ccl.training import pick_device, seed_everything

    saved, images, labels, dataset = _load_set(set_file)
    soft = saved.get("soft_labels")  # learned with the images (PAD's soft_labels): trained on
    if soft is not None and (problem := soft_targets_problem(soft, len(images), None, "soft_labels")):
        raise CclError(f"{set_file}: {problem}")
    settings = from_dict(EvalSettings, {"epochs": epochs, "networks": networks,
                                        **dict(parse_override(o) for o in overrides)}, "evaluation settings")
    dataset = _dataset_name(dataset)
    data = load_dataset(dataset, data_dir, download)
    if int(labels.max()) >= data.num_classes or tuple(images.shape[1:]) != tuple(data.shape):
        raise CclError(f"{set_file}: {tuple(images.shape[1:])} images of classes up to {int(labels.max())} do not "
                       f"fit {dataset} ({data.num_classes} classes of {tuple(data.shape)} images)")
    if soft is not None and soft.shape[1] != data.num_classes:  # its images may fit: the labels are to blame
        raise CclError(f"{set_file}: soft_labels have {soft.shape[1]} columns (one per class), which do not fit "
                       f"{dataset} ({data.num_classes} classes)")
    # A set of some classes (`ccl condense --classes`) is tested on those classes only.
    test_y, set_classes = torch.from_numpy(data.test_y), labels.unique().cpu()
    on_set = torch.isin(test_y, set_classes).numpy()
    seed_everything(seed)
    result = evaluate_synthetic(images.float(), labels, data.normalise(data.test_x[on_set]), test_y[on_set],
                                data.num_classes, pick_device(device), settings, progress=not quiet,
                                soft_labels=soft)
    write_json(set_file.with_suffix(".eval.json"), {**result, "settings": to_dict(settings), "seed": seed,
                                                    "soft_labels": soft is not None,
                                                    "test_classes": set_classes.tolist(),
                                                    "test_images": int(on_set.sum())})
    accs = ", ".join(f"{a:.4f}" for a in result["accuracies"])
    click.echo(f"{set_file}: test accuracy {result['mean']:.4f} +- {result['std']:.4f} over {networks} networks "
               f"({accs}; {epochs} epochs)")


def _initial_set(path: Path, dataset: str, classes: list[int] | None, ipc: int):
    """(images, labels) of a set file to start condensing from: `ipc` images of each of
    `classes` (None: of the set's classes), grouped by class in that order (the layout every
    method returns); one CclError line for each way it does not fit. The caller checks
    the image shape once the data is loaded."""
    import torch
    _, images, labels, made_for = _load_set(path)
    if _dataset_name(made_for) != dataset:
        raise CclError(f"{path}: a set of {made_for}, not of {dataset}")
    if classes is None:  # the set's own, in order; the caller checks that they are all the data's
        classes = labels.unique().tolist()
    wanted = torch.tensor(classes).repeat_interleave(ipc)  # (K * ipc,) the result's layout
    if not torch.equal(labels.long(), wanted):
        raise CclError(f"{path}: needs {ipc} image(s) of each class {','.join(map(str, classes))}, grouped by "
                       f"class in that order (--ipc {ipc}); it has {len(labels)} labelled "
                       f"{','.join(map(str, labels.unique().tolist()))}")
    return images.float(), labels.long()


def _load_set(path):
    """(the file's dict, its images, labels and data set's name) of a set `ccl condense`
    wrote, checked as `_check_set` does; one CclError line otherwise."""
    from ccl.io import load_torch
    saved = load_torch(path, "synthetic set", links=True)
    try:
        images, labels, dataset = saved["images"], saved["labels"], saved["dataset"]
    except (KeyError, TypeError) as e:
        raise CclError(f"{path}: not a synthetic set written by `ccl condense` ({type(e).__name__})") from None
    _check_set(path, images, labels)
    return saved, images, labels, dataset


def _check_set(set_file: Path, images, labels) -> None:
    """One line for each way a set file can be malformed, before any training."""
    import torch
    if not (torch.is_tensor(images) and images.dim() == 4 and len(images) > 0):
        raise CclError(f"{set_file}: images must be a non-empty (N, C, H, W) tensor")
    if not (torch.is_tensor(labels) and labels.shape == (len(images),) and not labels.is_floating_point()):
        raise CclError(f"{set_file}: labels must be N={len(images)} integer class indices, "
                       f"got {tuple(getattr(labels, 'shape', ()))}")
    if not bool(torch.isfinite(images.float()).all()):
        raise CclError(f"{set_file}: images contain NaN or inf")
    if int(labels.min()) < 0:
        raise CclError(f"{set_file}: labels must be >= 0")


main.add_command(compare)
main.add_command(report)

if __name__ == "__main__":
    main()
