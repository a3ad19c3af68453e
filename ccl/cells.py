"""A comparison's cells: what one cell is (picklable, for any executor), what it gave, and
the record a failed cell leaves in its folder. Below both `ccl.compare` and
`ccl.executors`, which each need them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccl.io import write_json

ERROR_FILE = "error.json"  # written into a cell folder whose run failed; read back by the report


@dataclass(frozen=True)
class CellSpec:
    """One cell of the grid: everything `run_cell` needs, picklable."""
    memory: str
    seed: int
    values: dict[str, Any]   # keyword values for ccl.runner.make_config, memory and seed included
    folder: Path             # DIR/cells/[<strategy>-]<memory>[-m<mem_size>]-s<seed>
    progress: bool = False
    strategy: str | None = None  # set when the grid has a strategy axis
    mem_size: int | None = None  # set when the grid has a memory-size axis

    @property
    def name(self) -> str:
        return cell_name(self.memory, self.seed, self.strategy, self.mem_size)


@dataclass(frozen=True)
class CellResult:
    memory: str
    seed: int
    status: str                  # finished | skipped (finished earlier) | failed | diverged
    run_dir: Path | None = None
    error: str | None = None
    seconds: float = 0.0
    final_average_accuracy: float | None = None
    strategy: str | None = None
    mem_size: int | None = None

    @property
    def name(self) -> str:
        return cell_name(self.memory, self.seed, self.strategy, self.mem_size)


def cell_name(memory: str, seed: int, strategy: str | None = None, mem_size: int | None = None) -> str:
    """[<strategy>-]<memory>[-m<mem_size>]-s<seed>: the axes a grid has, and no other, so that
    a grid of one strategy and one size keeps the names it always had."""
    return f"{strategy + '-' if strategy else ''}{memory}{f'-m{mem_size}' if mem_size else ''}-s{seed}"


def run_dir_in(folder: Path) -> Path | None:
    runs = [d for d in folder.iterdir() if (d / "config.json").is_file()] if folder.is_dir() else []
    return runs[0] if runs else None


def failed_cell(spec: CellSpec, error: str, details: str, seconds: float = 0.0, status: str = "failed") -> CellResult:
    """Record a failed (or diverged) cell: `error.json` in its folder (beside the run folder
    it began, if any), read back by the report; returns the result."""
    run_dir = run_dir_in(spec.folder)
    write_json(spec.folder / ERROR_FILE, {
        "memory": spec.memory, "seed": spec.seed, "mem_size": spec.mem_size, "status": status, "error": error,
        "run_dir": run_dir.name if run_dir else None, "traceback": details})
    return CellResult(spec.memory, spec.seed, status, run_dir, error, seconds, strategy=spec.strategy,
                      mem_size=spec.mem_size)
