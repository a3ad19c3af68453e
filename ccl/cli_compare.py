"""`ccl compare` (a grid of runs: memories x seeds) and `ccl report` (its report, rebuilt
from saved run folders). Registered on the `ccl` group by ccl/cli.py."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
from pathlib import Path

import click

from ccl import names as known
from ccl.cli_options import Choice, check_settings, config_values, friendly_errors, run_options, writable_folder
from ccl.errors import CclError

COMPARISONS_DIR = Path("comparisons")


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(v) for v in _names(text)]
    except ValueError:
        raise CclError(f"{option}: expected comma-separated integers, got {text!r}") from None


def parse_seeds(seeds: int | None, seed_list: list[int] | None) -> tuple[int, ...]:
    """`--seeds N` (0..N-1) or `--seed-list a,b,c`, not both; 3 seeds by default."""
    if seeds is not None and seed_list is not None:
        raise CclError("give --seeds or --seed-list, not both")
    if seed_list is not None:
        return tuple(seed_list)
    n = 3 if seeds is None else seeds
    if n < 1:
        raise CclError(f"--seeds must be at least 1, got {n}")
    return tuple(range(n))


def _cell_line(done: int, total: int, result) -> None:
    acc = f", final average accuracy {result.final_average_accuracy:.4f}" \
        if result.final_average_accuracy is not None else ""
    if result.status == "skipped":
        text = f"finished before{acc}"
    elif result.status == "finished":
        text = f"finished in {result.seconds:.0f} s{acc}"
    else:
        text = f"{result.status.upper()} after {result.seconds:.0f} s: {result.error}"  # FAILED, DIVERGED
    click.echo(f"[{done}/{total}] {result.name}: {text}")


@click.command()
@click.option("--memory", "memories", help="comma-separated memories to compare [every memory of `ccl list`]")
@click.option("--seeds", type=int, help="run seeds 0..N-1 [3]")
@click.option("--seed-list", help="comma-separated seeds, instead of --seeds, e.g. 0,5,7")
@click.option("--out", type=click.Path(path_type=Path),
              help="comparison folder [the newest one under comparisons/ made by the same command, "
                   "else comparisons/<timestamp>-<scenario>-m<mem_size>]")
@click.option("--executor", type=Choice(["local", "ray"]), default="local", show_default=True,
              help="local: cells one after another in this process; ray: every cell a Ray task "
                   "(pip install 'ccl[ray]')")
@click.option("--ray-address", envvar="RAY_ADDRESS", show_envvar=True,
              help="with --executor ray: an existing cluster (auto, HOST:PORT) [start Ray on this machine]")
@click.option("--cpus-per-run", type=float, help="with --executor ray: CPUs each cell reserves [1]")
@click.option("--gpus-per-run", type=float, help="with --executor ray: GPUs each cell reserves, e.g. 1 or 0.5 [0]")
@functools.partial(run_options, mem_size=click.option(
    "--mem-size", "mem_sizes", metavar="N[,N...]",
    help="images in memory, all classes together; a,b,c: a memory-size axis, and curve.png [200]"))
@click.pass_context
@friendly_errors
def compare(ctx, memories, seeds, seed_list, out, executor, ray_address, cpus_per_run, gpus_per_run, config_file,
            overrides, no_download, class_order, runs_dir, quiet, mem_sizes, **flags):
    """Run every memory with every seed, then write the comparison report.

    Each cell is an ordinary run folder in OUT/cells/<memory>-s<seed>/ (with --strategy a,b,
    OUT/cells/<strategy>-<memory>-s<seed>/; with --mem-size a,b, <memory>-m<size>-s<seed>). Running the same
    command again skips finished cells and redoes failed or unfinished ones; a failing
    cell is reported and does not stop the others (exit code 1 when any failed).
    With --executor ray the cells run in parallel as Ray tasks that write into OUT
    themselves: OUT must be on a filesystem every Ray node sees.
    """
    from ccl.executors import ray_executor, require_ray, sequential  # light: Ray loads only when asked for
    from ccl.io import folder_holder

    if ctx.get_parameter_source("runs_dir") == click.core.ParameterSource.COMMANDLINE:
        raise CclError("compare keeps its runs in --out DIR/cells; --runs-dir is for `ccl run`")
    if executor == "ray":
        require_ray()  # before the data is loaded or any folder made
    else:
        given = [f"--{name.replace('_', '-')}" for name in ("ray_address", "cpus_per_run", "gpus_per_run")
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise CclError(f"{', '.join(given)}: only with --executor ray")
    values, strategy_tables = config_values(flags, config_file, overrides, no_download, class_order)
    # --mem-size a,b is an axis of the grid; a single size is every cell's, as `ccl run
    # --mem-size` (and names no cell).
    sizes = tuple(_ints(mem_sizes, "--mem-size")) if mem_sizes is not None else ()
    if mem_sizes is not None and not sizes:
        raise CclError(f"--mem-size: expected comma-separated integers, got {mem_sizes!r}")
    if len(sizes) == 1:
        values["mem_size"] = sizes[0]
    size_axis = sizes if len(sizes) > 1 else ()
    chosen_seeds = parse_seeds(seeds, _ints(seed_list, "--seed-list") if seed_list else None)
    known.check({**values, "memory": memories})  # names, paths and a busy folder: before loading torch
    check_settings(values, _names(memories) if memories else list(known.MEMORIES))
    if out is not None and (holder := folder_holder(Path(out))):
        raise CclError(f"{out}: in use by another ccl process (pid {holder}, a comparison); "
                       "wait for it to finish or stop it")
    from ccl.compare import (GRID_FILE, Grid, default_out, find_previous, refuse_foreign, run_grid,
                             start, validate)
    from ccl.io import folder_lock
    from ccl.memory import MEMORIES
    from ccl.report import table, write_memory_picture, write_report
    from ccl.guards import Interrupted
    if executor == "ray" and str(values.get("device") or "").startswith("cuda") and not gpus_per_run:
        raise CclError(f"--device {values['device']} with --executor ray needs --gpus-per-run "
                       "(a cell reserving no GPU sees none)")
    # The grid is --memory x --seeds alone: a run config file's single memory and seed would
    # silently shrink it, so they are set aside (and said so).
    ignored = [key for key in ("memory", "seed") if values.pop(key, None) is not None]
    if ignored:
        click.echo(f"note: {' and '.join(ignored)} from {config_file} ignored; use --memory and --seeds", err=True)
    names = _names(memories) if memories else MEMORIES.names()
    if not memories and values.get("online") and not values.get("reveal_boundaries"):
        names = [e.name for e in MEMORIES.entries() if e.value.online]  # every memory that runs there
    # --strategy a,b is an axis of the grid; a single --strategy applies to every cell.
    strategies = tuple(_names(values.pop("strategy"))) if "," in str(values.get("strategy") or "") else ()
    grid = Grid(tuple(names), chosen_seeds, values, Path("."), strategies, strategy_tables, size_axis)
    settings = validate(grid)
    if out is None:
        out = find_previous(COMPARISONS_DIR, grid, settings) or \
            default_out(COMPARISONS_DIR, settings["scenario"], size_axis or (settings["mem_size"],))
    grid = dataclasses.replace(grid, out=writable_folder(Path(out), "--out"))
    verb = "continuing" if (grid.out / GRID_FILE).exists() else "into"
    run_cells, where = sequential, ""
    if executor == "ray":
        cpus = 1.0 if cpus_per_run is None else cpus_per_run
        gpus = 0.0 if gpus_per_run is None else gpus_per_run
        run_cells = ray_executor(ray_address, cpus, gpus)  # connects now: errors before any folder
        where = f" on Ray ({ray_address or 'this machine'}; {cpus:g} CPUs, {gpus:g} GPUs per run)"
    refuse_foreign(grid.out)
    with folder_lock(grid.out, "a comparison"):  # one writer per comparison folder
        start(grid, settings)
        axis = f"{len(grid.strategies)} strategies x " if grid.strategies else ""
        size_text = f"{len(grid.mem_sizes)} memory sizes x " if grid.mem_sizes else ""
        click.echo(f"{settings['scenario']}: {axis}{len(grid.memories)} memories x {size_text}{len(grid.seeds)} seeds, "
                   f"{verb} {grid.out}{where}")
        try:
            results = run_grid(grid, progress=not quiet, executor=run_cells, on_result=_cell_line)
        except KeyboardInterrupt as e:
            click.echo(f"\ninterrupted; run the same command (or with --out {grid.out}) to continue: "
                       "finished cells are kept", err=True)
            sys.exit(128 + (e.signum if isinstance(e, Interrupted) else 2))  # as `ccl run` does
        for r in results:  # each cell's memory.png, as `ccl run` writes it
            if r.status == "finished" and r.run_dir is not None:
                write_memory_picture(r.run_dir)
        summary = write_report([grid.out])
    click.echo(table(summary))
    click.echo(f"comparison folder: {grid.out}")
    if any(r.status == "failed" for r in results):
        sys.exit(1)


@click.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="where the report goes [the folder given, when only one is]")
@friendly_errors
def report(dirs, out):
    """Rebuild the comparison report (comparison.md/.json, figures) from saved runs.

    DIRS are comparison folders or plain folders of run folders; nothing is trained.
    """
    for d in dirs:
        if not d.is_dir():
            raise CclError(f"{d}: no such folder")
    from ccl.io import LOCK_FILE, folder_lock
    from ccl.report import table, write_report
    target = Path(out or dirs[0])
    # A comparison folder (it has a lock file) is held while its report is rewritten: a
    # second writer of comparison.json is refused, as a second `ccl compare` would be.
    held = folder_lock(target, "a report") if (target / LOCK_FILE).exists() else contextlib.nullcontext()
    with held:
        summary = write_report(dirs, out)
    click.echo(table(summary))
    click.echo(f"report: {Path(out or dirs[0]) / 'comparison.md'}")
