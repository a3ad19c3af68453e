"""`ccl compare --executor ray`: a real local Ray instance (2 CPUs, no GPU) runs a tiny grid
to the same numbers as the local executor, resumes it after a Ctrl-C that cancelled the
outstanding tasks, and records cells that fail on a worker while the others finish."""
import dataclasses
import json
import os
import sys
import time

import pytest
from click.testing import CliRunner

from ccl.cli_compare import compare
from ccl.compare import CellSpec, Grid, finished_run, run_cell, run_grid, start, validate
from ccl.report import collect_runs, write_report

TINY = ["--scenario", "split-digits", "--epochs", "1", "--train-per-class", "20", "--mem-size", "20",
        "--mem-batch", "8", "--width", "16", "--batch-size", "16", "--quiet"]
TINY_VALUES = dict(scenario="split-digits", epochs=1, train_per_class=20, mem_size=20, mem_batch=8, width=16,
                   batch_size=16)
GRID = ["--memory", "random,herding", "--seed-list", "0,1"]
NEEDS_RAY = "Ray is an optional extra: pip install 'ccl[ray]'"


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module; the executors find it initialised and use it."""
    ray = pytest.importorskip("ray", reason=NEEDS_RAY)
    from ccl.executors import connect
    assert connect(num_cpus=2)
    assert ray.cluster_resources().get("CPU") == 2 and not ray.cluster_resources().get("GPU")
    yield ray
    ray.shutdown()


def crash_for_seed_1(spec):
    """A run_cell whose worker process dies on seed 1 (as under the OOM killer)."""
    if spec.seed == 1:
        os._exit(3)
    return run_cell(spec)


def run_values(memory, seed, **extra):
    return {**TINY_VALUES, "memory": memory, "seed": seed, **extra}


def test_ray_grid_resumes_after_ctrl_c_and_matches_the_local_executor(tmp_path, ray_instance):
    from ccl.executors import ray_executor
    ray = ray_instance
    local = Grid(("random", "herding"), (0, 1), dict(TINY_VALUES), tmp_path / "local")
    settings = validate(local)
    start(local, settings)
    assert {r.status for r in run_grid(local)} == {"finished"}
    write_report([local.out])

    # Ctrl-C as the first cell comes back: the other tasks are cancelled (none keeps a CPU).
    remote = dataclasses.replace(local, out=tmp_path / "ray")
    start(remote, settings)

    def ctrl_c(done, total, result):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_grid(remote, executor=ray_executor(cpus=1), on_result=ctrl_c)
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2
    finished = [s.name for s in remote.cells() if finished_run(s.folder)]
    assert 1 <= len(finished) < 4, finished

    # The same grid from the command line continues it: finished cells are skipped.
    result = CliRunner().invoke(compare, [*TINY, *GRID, "--executor", "ray", "--out", str(remote.out)])
    assert result.exit_code == 0, result.output
    assert f"continuing {remote.out} on Ray (this machine; 1 CPUs, 0 GPUs per run)" in result.output
    assert result.output.count("finished before") == len(finished)
    assert result.output.count(": finished in") == 4 - len(finished)

    # Same seeds, same numbers: every cell's accuracy matrix, and the report apart from timings.
    for spec in local.cells():
        here, there = finished_run(spec.folder), finished_run(remote.out / "cells" / spec.name)
        matrices = [json.loads((d / "results.json").read_text())["accuracy_matrix"] for d in (here, there)]
        assert matrices[0] == matrices[1], spec.name
    timing_free = ("label", "seeds", "final_average_accuracy", "average_forgetting", "final_bwt",
                   "seen_accuracy", "accuracy_matrix", "memory_images", "memory_bytes")
    reports = [json.loads((d / "comparison.json").read_text())["memories"] for d in (local.out, remote.out)]
    assert [{k: g[k] for k in timing_free} for g in reports[0]] == [{k: g[k] for k in timing_free} for g in reports[1]]


def test_cells_failing_on_workers_are_recorded_and_the_others_finish(tmp_path, ray_instance):
    from ccl.executors import ray_executor
    ray = ray_instance
    # The worker imports this module's crash_for_seed_1 by value (tests/ is not on its path).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cells = tmp_path / "cells"
    specs = [CellSpec("random", 0, run_values("random", 0), cells / "random-s0"),
             # a preset file only this cell is given, and that does not exist: prepare() raises
             CellSpec("datadam", 0, run_values("datadam", 0, memory_config=str(tmp_path / "missing.toml")),
                      cells / "datadam-s0"),
             # the worker process dies (twice: Ray retries a lost worker once)
             CellSpec("random", 1, run_values("random", 1), cells / "random-s1")]
    results = {r.name: r for r in ray_executor(cpus=1)(specs, crash_for_seed_1)}
    assert results["random-s0"].status == "finished" and finished_run(cells / "random-s0")
    assert results["datadam-s0"].status == "failed" and "missing.toml" in results["datadam-s0"].error
    assert results["random-s1"].status == "failed" and "WorkerCrashedError" in results["random-s1"].error
    records = {(r.memory, r.seed): r for r in collect_runs([tmp_path])}
    assert records["random", 0].status == "finished"
    for key in (("datadam", 0), ("random", 1)):
        assert records[key].status == "failed" and records[key].error == results["%s-s%d" % key].error


@pytest.mark.parametrize("args, message", [
    (["--gpus-per-run", "1", "--ray-address", "auto"], "--ray-address, --gpus-per-run: only with --executor ray"),
    (["--executor", "ray"], "--executor ray needs Ray, an optional extra: pip install 'ccl[ray]'"),
])
def test_ray_options_are_checked_before_anything_runs(tmp_path, monkeypatch, args, message):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    result = CliRunner().invoke(compare, [*TINY, "--memory", "random", *args, "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 2, result.output
    assert result.output == f"error: {message}\n"
    assert not (tmp_path / "cmp").exists()


def test_a_cuda_device_on_ray_needs_gpus_per_run(tmp_path):
    pytest.importorskip("ray", reason=NEEDS_RAY)
    result = CliRunner().invoke(compare, [*TINY, "--memory", "random", "--executor", "ray", "--device", "cuda",
                                          "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 2 and "needs --gpus-per-run" in result.output
    assert not (tmp_path / "cmp").exists()
