"""A comparison: every memory x every seed, each cell a normal run folder, then a report.

Layout of a comparison folder:

    DIR/grid.json                          the grid's resolved settings (written first)
    DIR/cells/<memory>-s<seed>/<run folder>  one ordinary `ccl run` folder per cell
    DIR/cells/<memory>-s<seed>/error.json  why the cell failed, when it failed
    (with a strategy axis [<strategy>-]<memory>..., with a memory-size axis <memory>-m<size>-s<seed>)
    DIR/comparison.md, comparison.json, *.png   the report (`ccl.report.write_report`)

The cell folder wraps the run folder (rather than renaming it) so the runner names and
fills run folders exactly as for `ccl run`, and a cell is found by a fixed path. A cell
is done when its run folder says `finished` and its results read back; anything else
(failed, running, interrupted, corrupt) is removed and run again.

`run_cell` takes a picklable `CellSpec` and returns a `CellResult`; an executor
(ccl/executors.py) decides where cells run: one after another in this process
(`sequential`, the default), or as Ray tasks writing into the same folder.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ccl.cells import CellResult, CellSpec, cell_name, failed_cell
from ccl.errors import CclError
from ccl.executors import Executor, sequential
from ccl.io import GRID_SHAPE, LOCK_FILE, folder_holder, read_json, read_results, refuse_links, write_json
from ccl.memory import MEMORIES
from ccl.experiment import RunConfig, given_config, make_config, prepare
from ccl.run_config import with_strategy_table
from ccl.guards import Diverged
from ccl.runner import run as run_experiment, status
from ccl.strategies import STRATEGIES

GRID_FILE = "grid.json"
CELLS_DIR = "cells"
# Settings that may differ when a comparison is continued elsewhere without changing what it measures.
MACHINE_KEYS = ("device", "data_dir", "download")


@dataclass(frozen=True)
class Grid:
    """[Strategies x] memories [x memory sizes] x seeds over shared run values.

    `values` are the run settings as given (config file and flags), without memory and
    seed; `memory_settings` in it are `--set` overrides, sent only to the memories whose
    settings have that key. With `strategies` (from `--strategy a,b`) the grid gains that
    axis and cells are named <strategy>-<memory>-s<seed>; without, every cell runs the
    strategy in `values` and keeps the older <memory>-s<seed> names. On that axis the
    `strategy_settings` in `values` (`--strategy-set`) go only to the strategies that
    have the key, and `strategy_tables` (a run preset's `[strategies.NAME]`, without what
    the command line set) each to its strategy's cells. With `mem_sizes` (from `--mem-size
    a,b`) likewise: cells are named <memory>-m<size>-s<seed>, and without, every cell has
    `values`' mem_size and the names without one.
    """
    memories: tuple[str, ...]
    seeds: tuple[int, ...]
    values: dict[str, Any]
    out: Path
    strategies: tuple[str, ...] = ()
    strategy_tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    mem_sizes: tuple[int, ...] = ()

    def cell_values(self, memory: str, seed: int, strategy: str | None = None,
                    mem_size: int | None = None) -> dict[str, Any]:
        values = {**memory_values(self.values, memory), "seed": seed}
        if mem_size is not None:
            values["mem_size"] = mem_size
        if strategy is None:
            return values
        return with_strategy_table({**strategy_values(values, strategy), "strategy": strategy},
                                   self.strategy_tables.get(strategy, {}), strategy)

    def cells(self, progress: bool = False) -> list[CellSpec]:
        """Seed-major order: after the first len(memories) x sizes cells, one full comparison exists."""
        return [CellSpec(m, s, self.cell_values(m, s, g, z), self.out / CELLS_DIR / cell_name(m, s, g, z), progress,
                         g, z)
                for s in self.seeds for g in (self.strategies or (None,)) for z in (self.mem_sizes or (None,))
                for m in self.memories]


def memory_values(values: dict[str, Any], memory: str) -> dict[str, Any]:
    """Run values for one memory: `--set` overrides and a `--memory-config` preset go only to
    memories with settings, and of the overrides only the keys its settings have (a grid mixes
    methods: `--set iterations=200` is meant for the condensing ones)."""
    spec = MEMORIES.get(memory).value
    out = {**values, "memory": memory}
    overrides = values.get("memory_settings") or {}
    if spec.settings is None:
        out["memory_settings"] = {}
        out.pop("memory_config", None)
    else:  # its method's keys and its filler's (`--set holdout=0.2` is meant for the memories that hold out)
        known = {f.name for f in dataclasses.fields(spec.settings)} | set(spec.filler_keys)
        out["memory_settings"] = {k: v for k, v in overrides.items() if k in known}
    return out


def strategy_values(values: dict[str, Any], strategy: str) -> dict[str, Any]:
    """Run values for one strategy of a grid's axis: of the `--strategy-set` overrides only
    the keys its settings have (`alpha` is meant for der and der++, not er)."""
    known = {f.name for f in dataclasses.fields(STRATEGIES.get(strategy).value.settings)}
    return {**values, "strategy_settings": {k: v for k, v in (values.get("strategy_settings") or {}).items()
                                            if k in known}}


def check_overrides(grid: Grid) -> None:
    """Every `--set` key must reach at least one memory, and on a strategy axis every
    `--strategy-set` key at least one strategy, or it is a typo."""
    known: set[str] = set()
    for memory in grid.memories:
        spec = MEMORIES.get(memory).value
        if spec.settings is not None:
            known |= {f.name for f in dataclasses.fields(spec.settings)} | set(spec.filler_keys)
    for key in grid.values.get("memory_settings") or {}:
        if key not in known:
            raise CclError(f"--set {key}: none of the memories {', '.join(grid.memories)} has a setting {key!r}")
    if grid.strategies:
        known = {f.name for s in grid.strategies for f in dataclasses.fields(STRATEGIES.get(s).value.settings)}
        for key in grid.values.get("strategy_settings") or {}:
            if key not in known:
                raise CclError(f"--strategy-set {key}: none of the strategies {', '.join(grid.strategies)} "
                               f"has a setting {key!r}")


def validate(grid: Grid) -> dict[str, Any]:
    """Check every cell's settings and load the data once per memory, before anything runs;
    returns the grid's resolved shared settings. CclError on the first problem."""
    if not grid.memories:
        raise CclError("--memory: give at least one memory")
    if not grid.seeds:
        raise CclError("give at least one seed")
    for name, items in (("memory", grid.memories), ("seed-list", grid.seeds), ("strategy", grid.strategies),
                        ("mem-size", grid.mem_sizes)):
        repeated = sorted({str(v) for v in items if items.count(v) > 1})
        if repeated:
            raise CclError(f"--{name}: {', '.join(repeated)} given twice")
    check_overrides(grid)
    for memory in grid.memories:
        for strategy in grid.strategies or (None,):
            for seed in grid.seeds:
                for size in grid.mem_sizes or (None,):
                    make_config(**grid.cell_values(memory, seed, strategy, size))
            # prepare() is the runner's own full check (memory settings, data present, budget
            # against the number of classes and the training images); it loads the data, so
            # once per memory at each end of the size axis, not per cell.
            for size in sorted({min(grid.mem_sizes), max(grid.mem_sizes)}) if grid.mem_sizes else [None]:
                prepare(make_config(**grid.cell_values(memory, grid.seeds[0], strategy, size)))
    return shared_settings(grid)


def shared_settings(grid: Grid) -> dict[str, Any]:
    """The resolved run settings every cell shares (what grid.json records and a resumed
    comparison must match): the config with memory, seed and machine-specific keys left out,
    plus the raw memory overrides."""
    # As given, not resolved: auto and None resolve per memory and strategy, cell by cell.
    cfg = dataclasses.asdict(given_config(**grid.cell_values(grid.memories[0], grid.seeds[0])))
    for key in ("memory", "seed", "memory_settings", "memory_config", *MACHINE_KEYS):
        cfg.pop(key, None)
    if grid.strategies:
        cfg.pop("strategy", None)
    if grid.mem_sizes:  # an axis: a comparison continued with another size measures the same thing
        cfg.pop("mem_size", None)
    cfg["memory_settings"] = dict(grid.values.get("memory_settings") or {})
    cfg["memory_config"] = grid.values.get("memory_config")
    if grid.strategy_tables:  # only then: a comparison made before the tables existed continues
        cfg["strategy_tables"] = {s: dict(t) for s, t in grid.strategy_tables.items()}
    return cfg


def grid_record(grid: Grid, settings: dict[str, Any]) -> dict[str, Any]:
    return {"memories": list(grid.memories), "seeds": list(grid.seeds), "strategies": list(grid.strategies),
            "mem_sizes": list(grid.mem_sizes), "settings": settings,
            "machine": {k: grid.values.get(k) for k in MACHINE_KEYS if k in grid.values},
            "layout": f"{CELLS_DIR}/{'<strategy>-' if grid.strategies else ''}<memory>"
                      f"{'-m<mem_size>' if grid.mem_sizes else ''}-s<seed>/<run folder>",
            "created": dt.datetime.now().isoformat(timespec="seconds")}


def default_out(parent: Path, scenario: str, mem_sizes: Sequence[int]) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    sizes = f"{min(mem_sizes)}-{max(mem_sizes)}" if len(mem_sizes) > 1 else str(mem_sizes[0])
    return Path(parent) / f"{stamp}-{scenario}-m{sizes}"


def find_previous(parent: Path, grid: Grid, settings: dict[str, Any]) -> Path | None:
    """The newest comparison folder under `parent` made by the same command (same settings,
    memories and seeds), so that re-running the command continues it. Sizes of a memory-size
    axis may differ: the command again with another size adds that size's cells (a grid of
    one size has its mem_size in `settings`, so it never continues one of several)."""
    for path in sorted(Path(parent).glob(f"*/{GRID_FILE}"), reverse=True):
        try:
            old = read_json(path, GRID_SHAPE)
        except CclError:
            continue
        if (old.get("settings") == settings and old.get("memories") == list(grid.memories)
                and old.get("seeds") == list(grid.seeds) and old.get("strategies", []) == list(grid.strategies)):
            return path.parent
    return None


def start(grid: Grid, settings: dict[str, Any]) -> None:
    """Write grid.json, after checking that an existing comparison in the folder measured the
    same thing (memories, seeds and the sizes of a size axis may be added; shared settings
    may not change)."""
    path = grid.out / GRID_FILE
    refuse_links(grid.out, path, grid.out / CELLS_DIR)
    if path.exists():
        record = read_json(path, GRID_SHAPE)
        if bool(record.get("mem_sizes")) != bool(grid.mem_sizes):  # its cells are named otherwise
            raise CclError(f"{grid.out} holds a comparison {'of one' if grid.mem_sizes else 'over several'} memory "
                           f"size{'' if grid.mem_sizes else 's'}; choose another --out (`ccl report` takes both)")
        old = record["settings"]
        defaults = dataclasses.asdict(RunConfig())  # a setting newer than the folder: its default ran
        changed = sorted(k for k in set(old or {}) | set(settings)
                         if (old or {}).get(k, defaults.get(k)) != settings.get(k, defaults.get(k)))
        if changed:
            raise CclError(f"{grid.out} holds a comparison with other settings ({', '.join(changed)}); "
                           "choose another --out")
    refuse_foreign(grid.out)
    write_json(path, grid_record(grid, settings))


def refuse_foreign(out: Path) -> None:
    """A CclError if `out` holds files but no comparison; checked before its lock is taken
    too, so that a folder refused is left without one."""
    refuse_links(out, out / GRID_FILE, out / CELLS_DIR)
    if not (out / GRID_FILE).exists() and out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()):
        raise CclError(f"{out} exists and is not a comparison folder (no {GRID_FILE}); choose another --out")


def finished_run(folder: Path) -> Path | None:
    """The cell's run folder if it finished and its results read back, else None."""
    if not folder.is_dir():
        return None
    runs = [d for d in folder.iterdir() if (d / "config.json").is_file()]
    if len(runs) != 1:
        return None
    try:
        if status(runs[0]).get("status") != "finished":
            return None
        read_results(runs[0] / "results.json")
    except CclError:
        return None
    return runs[0]


def run_cell(spec: CellSpec) -> CellResult:
    """Run one cell into `spec.folder`, unless it finished there before.

    Any exception fails the cell, not the grid: the error is returned and written to
    `error.json` in the cell folder. KeyboardInterrupt (and the runner's SIGTERM
    `Interrupted`) still stops everything.
    """
    done = finished_run(spec.folder)
    if done is not None:
        acc = read_json(done / "results.json").get("final_average_accuracy")
        return CellResult(spec.memory, spec.seed, "skipped", done, final_average_accuracy=acc, strategy=spec.strategy,
                          mem_size=spec.mem_size)
    try:  # a linked cell, or a run folder whose lock is not ccl's (folder_holder), fails this cell only
        refuse_links(spec.folder.parent, spec.folder)
        runs = [d for d in spec.folder.iterdir() if d.is_dir() and not d.is_symlink()] if spec.folder.is_dir() else []
        holder = next((h for d in runs if (h := folder_holder(d))), None)
    except CclError as e:
        return CellResult(spec.memory, spec.seed, "failed", None, str(e), strategy=spec.strategy,
                          mem_size=spec.mem_size)
    if holder is not None:  # another process (a `ccl run --resume`) is writing this cell: leave it be
        return CellResult(spec.memory, spec.seed, "failed", None,
                          f"{spec.folder}: in use by another ccl process (pid {holder}); left as it is",
                          strategy=spec.strategy, mem_size=spec.mem_size)
    if spec.folder.exists():
        shutil.rmtree(spec.folder)  # a failed or unfinished attempt: start the cell over
    start_time = time.perf_counter()
    try:
        prepared = prepare(make_config(**spec.values))
        run_dir = run_experiment(prepared, spec.folder, progress=spec.progress)
    except Exception as e:
        error = str(e) if isinstance(e, CclError) else f"{type(e).__name__}: {e}"
        return failed_cell(spec, error, traceback.format_exc(), time.perf_counter() - start_time,
                           "diverged" if isinstance(e, Diverged) else "failed")
    try:
        acc = read_results(run_dir / "results.json")["final_average_accuracy"]
    except CclError as e:  # finished but unreadable: the cell failed, the grid goes on
        return failed_cell(spec, str(e), "", time.perf_counter() - start_time)
    return CellResult(spec.memory, spec.seed, "finished", run_dir, None, time.perf_counter() - start_time, acc,
                      spec.strategy, spec.mem_size)


def run_grid(grid: Grid, progress: bool = False, executor: Executor = sequential,
             on_result: Callable[[int, int, CellResult], None] | None = None) -> list[CellResult]:
    """Run (or continue) every cell of a validated, started grid; results in the order the
    executor ends them (cell order for `sequential`).

    Args:
        executor: callable(specs, run_cell) yielding a CellResult per cell (ccl/executors.py).
        on_result: optional callback(done count, total, result) as each cell ends.
    """
    specs = grid.cells(progress)
    results = []
    outcomes = iter(executor(specs, run_cell))
    try:
        for result in outcomes:
            results.append(result)
            if on_result:
                on_result(len(results), len(specs), result)
    finally:
        # An exception here (Ctrl-C in on_result) closes the executor now, not when the
        # traceback lets go of it: the Ray executor cancels its outstanding tasks on close.
        close = getattr(outcomes, "close", None)
        if close is not None:
            close()
    return results
