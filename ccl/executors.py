"""Where the cells of a comparison run (`ccl.compare.run_grid`).

An executor is a callable `(specs, run_cell) -> iterable of CellResult`, one result per cell
in the order cells end. It knows nothing of grids: `run_cell` (ccl.compare) runs one cell
into its folder, skips it when it finished before, and records a failure itself.

- `sequential`: one cell after another in this process (`ccl compare --executor local`).
- `ray_executor(...)`: every cell a Ray task with its own CPUs/GPUs, on this machine or on
  a cluster (`--executor ray`). Tasks write into the comparison folder themselves, so its
  path must be visible to every worker (one machine, or a shared filesystem). Ray is an
  optional extra: `pip install 'ccl[ray]'`.

Nothing here is imported by a Ray worker except `_cell_task` (this module, light) and what
`run_cell` needs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ccl.cells import CellResult, CellSpec, failed_cell
from ccl.errors import CclError

RunCell = Callable[[CellSpec], CellResult]
Executor = Callable[[Sequence[CellSpec], RunCell], Iterable[CellResult]]

INSTALL_RAY = "pip install 'ccl[ray]'"
CANCEL_GRACE_S = 10.0  # how long cancelled cells get to mark their run folders interrupted

log = logging.getLogger(__name__)


def sequential(specs: Sequence[CellSpec], run_cell: RunCell) -> Iterator[CellResult]:
    """The default executor: cells one after another, in this process."""
    for spec in specs:
        yield run_cell(spec)
        # Avalanche's strategy and plugins refer to each other, so the cell's model and
        # normalised data (600 MB for CIFAR) wait for the cycle collector: free them now,
        # before the next cell loads its own.
        gc.collect()


def require_ray():
    """The `ray` module, or one clear line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise CclError(f"--executor ray needs Ray, an optional extra: {INSTALL_RAY}") from None
    return ray


def ray_executor(address: str | None = None, cpus: float = 1, gpus: float = 0,
                 num_cpus: int | None = None) -> Executor:
    """Connect to Ray now (errors are CclError, before anything is written) and return an
    executor running every cell as a Ray task reserving `cpus` CPUs and `gpus` GPUs.

    Args:
        address: an existing cluster (`auto`, `HOST:PORT`, `ray://...`); None starts a
            local Ray instance on this machine, shut down when the grid ends. When Ray is
            already initialised in this process, that instance is used as it is.
        num_cpus: CPUs of the local instance [this machine's].

    A cell given no GPU runs on the CPU (its task sees no GPU); one given GPUs sees only
    those, so `--device auto` picks them.
    """
    ray = require_ray()
    if not cpus > 0:
        raise CclError(f"--cpus-per-run must be positive, got {cpus}")
    if gpus < 0 or (gpus > 1 and gpus != int(gpus)):
        raise CclError(f"--gpus-per-run must be a fraction below 1 or a whole number, got {gpus}")
    # Ray retries a task whose worker died (a lost node, the OOM killer) once; an exception
    # in the cell is not retried: run_cell records it.
    task = ray.remote(_cell_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=1)
    started = connect(address, num_cpus, cpus, gpus)

    def execute(specs: Sequence[CellSpec], run_cell: RunCell) -> Iterator[CellResult]:
        nonlocal started
        if not ray.is_initialized():  # called again after a grid that shut its instance down
            started = connect(address, num_cpus, cpus, gpus)
        cwd, argv = os.getcwd(), list(sys.argv)
        # Absolute folders (the worker's directory is not ours); no progress bars from
        # tasks running side by side.
        specs = [dataclasses.replace(s, folder=Path(s.folder).absolute(), progress=False) for s in specs]
        refs: dict = {}
        pending: list = []
        try:
            with _interrupts():
                for spec in specs:
                    ref = task.remote(run_cell, spec, cwd, argv)
                    refs[ref] = spec
                    pending.append(ref)
                while pending:
                    # A timeout, so that Ctrl-C is seen promptly while waiting.
                    done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                    for ref in done:
                        yield _outcome(ray, ref, refs[ref])
        finally:
            # Ctrl-C, SIGTERM, or the caller stopped early: cells still running stop (their
            # run folders say "interrupted"), cells not started never start; the grid
            # resumes from its folder.
            if pending:
                _cancel(ray, pending)
            if started:
                ray.shutdown()
    return execute


@contextlib.contextmanager
def _interrupts():
    """SIGINT and SIGTERM end the grid as `Interrupted`, as they end a local run (exit code
    130 or 143). ray.wait turns a signal handler's exception into a plain KeyboardInterrupt,
    so the signal is noted and the exception rebuilt."""
    from ccl.guards import Interrupted
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum, frame):
        received.append(signum)
        raise Interrupted(signum)
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except KeyboardInterrupt as e:
        if received and not isinstance(e, Interrupted):
            raise Interrupted(received[-1]) from None
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _cell_task(run_cell: RunCell, spec: CellSpec, cwd: str, argv: list[str]) -> CellResult:
    """Runs one cell on a Ray worker, as if in the driver's directory and command."""
    import ray
    if not ray.get_gpu_ids():
        # Ray leaves CUDA_VISIBLE_DEVICES alone for a task given no GPU: hide them, so
        # that a cell reserving none uses none.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    old_cwd, old_argv = os.getcwd(), sys.argv
    try:
        if os.path.isdir(cwd):  # relative --data-dir or --memory-config paths, as given
            os.chdir(cwd)
        sys.argv = argv  # recorded in the run's config.json
        return run_cell(spec)
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        gc.collect()  # the worker takes the next cell: free this one's cycles now (see sequential)


def _outcome(ray, ref, spec: CellSpec) -> CellResult:
    """The task's CellResult; a task that died or raised past run_cell is a failed cell."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None)  # RayTaskError: the exception in the task
        error = f"{type(cause).__name__}: {cause}" if cause is not None else \
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        try:
            return failed_cell(spec, error, str(e))
        except OSError:  # the cell's folder is not writable from here either
            return CellResult(spec.memory, spec.seed, "failed", None, error, strategy=spec.strategy,
                              mem_size=spec.mem_size)


def _cancel(ray, refs: list) -> None:
    for ref in refs:
        ray.cancel(ref)  # a KeyboardInterrupt in the task: the runner marks its folder
    _, left = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)
    for ref in left:
        ray.cancel(ref, force=True)  # kill its worker; the cell is redone on resume


def runtime_env() -> dict[str, Any]:
    """Environment variables of the workers: the driver's OpenMP wait policy and, when `ccl`
    is imported from a source checkout (tests, `python -m ccl.cli` from the repository), that
    checkout on PYTHONPATH so workers run the same code. An installed package needs nothing:
    workers use the same Python environment (or, on a cluster, its own installation)."""
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    return {"env_vars": env}


def connect(address: str | None = None, num_cpus: int | None = None, cpus: float = 1, gpus: float = 0) -> bool:
    """ray.init, quietly: the cluster at `address`, else a new local instance with `num_cpus`
    CPUs [this machine's]; CclError when that fails or no node can take a run of `cpus` CPUs
    and `gpus` GPUs. True when this call connected (ray.shutdown() then stops a local
    instance, or disconnects from a cluster), False when Ray was already initialised here."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    quiet = dict(logging_level=logging.ERROR, log_to_driver=False, runtime_env=runtime_env())
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(address="local", num_cpus=num_cpus or max(os.cpu_count() or 1, math.ceil(cpus)),
                     include_dashboard=False, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise CclError(f"cannot connect to {where}: {e}") from None
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        have = ", ".join(f"{r.get('CPU', 0):g} CPUs and {r.get('GPU', 0):g} GPUs" for r in nodes) or "no nodes"
        message = f"no Ray node has {cpus:g} CPUs and {gpus:g} GPUs for one run (have: {have})"
        if address:  # an autoscaling cluster may add such a node
            log.warning("%s; cells wait until one joins", message)
        else:
            ray.shutdown()
            raise CclError(message + "; lower --cpus-per-run / --gpus-per-run")
    return True  # the driver disconnects at the end (a cluster keeps running)
