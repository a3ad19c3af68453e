"""`ccl compare`: a grid of real tiny runs that resumes cell by cell, keeps going past a
failing cell, and rejects bad input before anything runs."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ccl import runner
from ccl.cli_compare import compare, parse_seeds
from ccl.compare import Grid, memory_values, start, validate
from ccl.errors import CclError

TINY = ["--scenario", "split-digits", "--epochs", "1", "--train-per-class", "20", "--mem-size", "20",
        "--mem-batch", "8", "--width", "16", "--batch-size", "16", "--quiet"]
TINY_VALUES = dict(scenario="split-digits", epochs=1, train_per_class=20, mem_size=20, mem_batch=8, width=16,
                   batch_size=16)


def invoke(*args):
    return CliRunner().invoke(compare, [*args, *TINY])


def only_run_folder(cell: Path) -> Path:
    runs = [d for d in cell.iterdir() if d.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}


def test_grid_resumes_skipping_finished_cells_and_survives_a_failing_cell(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default comparison folder is ./comparisons/...
    real_train = runner.train_and_evaluate

    def failing_for_none(p, *args, **kwargs):
        if p.config.memory == "none":
            raise RuntimeError("injected failure")
        return real_train(p, *args, **kwargs)

    # First attempt: the `none` cell fails inside the runner, the two `random` cells run for real.
    monkeypatch.setattr(runner, "train_and_evaluate", failing_for_none)
    first = invoke("--memory", "none,random", "--seed-list", "0,1")
    monkeypatch.setattr(runner, "train_and_evaluate", real_train)
    assert first.exit_code == 1, first.output
    assert "none-s0: FAILED" in first.output and "injected failure" in first.output
    assert "none-s1: FAILED" in first.output and first.output.count(": finished in") == 2
    [out] = list((tmp_path / "comparisons").iterdir())
    assert out.name.endswith("-split-digits-m20") and (out / "grid.json").exists()
    failed = only_run_folder(out / "cells" / "none-s0")
    assert json.loads((failed / "status.json").read_text())["status"] == "failed"
    assert "injected failure" in json.loads((out / "cells" / "none-s0" / "error.json").read_text())["error"]
    summary = json.loads((out / "comparison.json").read_text())
    seeds = {g["label"]: g["seeds"] for g in summary["memories"]}
    assert seeds == {"none": {"finished": [], "failed": [0, 1], "diverged": [], "unfinished": []},
                     "random": {"finished": [0, 1], "failed": [], "diverged": [], "unfinished": []}}
    assert "| none | 0 / 2 |" in (out / "comparison.md").read_text()

    # random-s1 now looks like a run killed midway; random-s0 stays finished.
    kept = only_run_folder(out / "cells" / "random-s0")
    kept_stamps = stamps(kept)
    killed = only_run_folder(out / "cells" / "random-s1")
    (killed / "status.json").write_text(json.dumps({"status": "running"}))

    # The same command again, no --out: it finds the comparison and redoes only what is not done.
    second = invoke("--memory", "none,random", "--seed-list", "0,1")
    assert second.exit_code == 0, second.output
    assert list((tmp_path / "comparisons").iterdir()) == [out]
    assert "random-s0: finished before" in second.output and second.output.count(": finished in") == 3
    assert only_run_folder(out / "cells" / "random-s0") == kept and stamps(kept) == kept_stamps
    redone = only_run_folder(out / "cells" / "random-s1")
    assert not killed.exists() or redone != killed
    for cell in ("none-s0", "none-s1", "random-s1"):
        run = only_run_folder(out / "cells" / cell)
        assert json.loads((run / "status.json").read_text())["status"] == "finished"
        assert not (out / "cells" / cell / "error.json").exists()
    summary = json.loads((out / "comparison.json").read_text())
    assert all(g["seeds"]["finished"] == [0, 1] for g in summary["memories"])
    for name in ("comparison.md", "accuracy.png", "matrix-none.png", "matrix-random.png", "memory-random.png"):
        assert (out / name).exists(), name


@pytest.mark.parametrize("args, message", [
    (["--memory", "random,magic"], "unknown memory 'magic'"),
    (["--memory", "random,random"], "--memory: random given twice"),
    (["--memory", "random", "--seeds", "2", "--seed-list", "0"], "--seeds or --seed-list, not both"),
    (["--memory", "random", "--seed-list", "0,x"], "expected comma-separated integers"),
    (["--memory", "random", "--seed-list", "-1"], "seed must not be negative"),
    (["--memory", "none,random", "--set", "iterations=3"], "none of the memories none, random has a setting"),
    (["--memory", "random", "--strategy", "er,er-ace", "--strategy-set", "alpha=0.2"],
     "--strategy-set alpha: none of the strategies er, er-ace has a setting 'alpha'"),
    (["--memory", "random", "--runs-dir", "runs"], "--runs-dir is for `ccl run`"),
    (["--memory", "none,random", "--mem-size", "5"], "--mem-size 5 is smaller than the number of classes"),
    (["--memory", "random", "--mem-size", "0,abc"], "--mem-size: expected comma-separated integers"),
    (["--memory", "random", "--mem-size", "0,20"], "--mem-size must be at least 1, got 0"),
    (["--memory", "random,herding", "--mem-size", "20,5"], "--mem-size 5 is smaller than the number of classes"),
    (["--memory", "random", "--mem-size", "20,30,20"], "--mem-size: 20 given twice"),
])
def test_bad_input_is_one_line_before_anything_runs(tmp_path, args, message):
    result = CliRunner().invoke(compare, [*TINY, *args, "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert result.output.count("\n") == 1
    assert not (tmp_path / "cmp").exists()


def test_a_folder_with_another_comparison_is_refused(tmp_path):
    grid = Grid(("random",), (0,), dict(TINY_VALUES), tmp_path / "cmp")
    start(grid, validate(grid))
    result = CliRunner().invoke(compare, [*TINY, "--memory", "random", "--seeds", "1", "--epochs", "2",
                                          "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 2 and "other settings (epochs)" in result.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(compare, [*TINY, "--memory", "random", "--out", str(tmp_path / "other")])
    assert result.exit_code == 2 and "not a comparison folder" in result.output
    # cells named with their size and without never share a folder
    grid = Grid(("random",), (0,), dict(TINY_VALUES), tmp_path / "sized", mem_sizes=(10, 20))
    start(grid, validate(grid))
    result = CliRunner().invoke(compare, [*TINY, "--memory", "random", "--seeds", "1", "--out", str(tmp_path / "sized")])
    assert result.exit_code == 2 and "holds a comparison over several memory sizes" in result.output


def test_memory_overrides_go_only_to_memories_that_have_the_setting():
    values = {"mem_size": 20, "memory_settings": {"iterations": 5}, "memory_config": None}
    assert memory_values(values, "random")["memory_settings"] == {}
    assert memory_values(values, "datadam")["memory_settings"] == {"iterations": 5}
    assert memory_values(values, "datadam")["memory"] == "datadam"


def test_seeds():
    assert parse_seeds(None, None) == (0, 1, 2)
    assert parse_seeds(2, None) == (0, 1)
    assert parse_seeds(None, [0, 5, 7]) == (0, 5, 7)
    with pytest.raises(CclError, match="at least 1"):
        parse_seeds(0, None)


def test_a_cell_failing_before_its_run_folder_exists_is_recorded(tmp_path, monkeypatch):
    from ccl import compare as compare_module
    from ccl.compare import CellSpec, run_cell
    from ccl.report import collect_runs

    def no_data(cfg):
        raise CclError("cifar10 not found in /nowhere")
    monkeypatch.setattr(compare_module, "prepare", no_data)
    cell = tmp_path / "cells" / "random-s3"
    result = run_cell(CellSpec("random", 3, {**TINY_VALUES, "memory": "random", "seed": 3}, cell))
    assert result.status == "failed" and result.error == "cifar10 not found in /nowhere"
    assert [p.name for p in cell.iterdir()] == ["error.json"]
    [record] = collect_runs([tmp_path])
    assert (record.memory, record.seed, record.status, record.error) == ("random", 3, "failed", result.error)


def test_strategy_axis_names_cells_and_report_rows(tmp_path):
    out = tmp_path / "cmp"
    result = invoke("--memory", "random", "--strategy", "er,der++,der", "--seeds", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "cells").iterdir()) == ["der++-random-s0", "der-random-s0", "er-random-s0"]
    groups = json.loads((out / "comparison.json").read_text())["memories"]
    assert sorted(g["label"] for g in groups) == ["der random", "der++ random", "er random"]
    assert all(g["axes"] == {"strategy": g["label"].split()[0], "memory": "random"} for g in groups)  # no stream_slots
    assert sorted(p.name for p in out.glob("matrix-*.png")) == ["matrix-der-random.png", "matrix-derpp-random.png",
                                                              "matrix-er-random.png"]
    rows = [line for line in (out / "comparison.md").read_text().splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| strategy | memory | seeds done") and "Δ er" in rows[0]
    finals = [float(row.split(" | ")[3].strip("*").split()[0]) for row in rows[1:]]
    assert finals == sorted(finals, reverse=True) and rows[1].count("**") == 2  # sorted, the best marked
    er_row = next(row for row in rows[1:] if row.startswith("| er |"))
    assert er_row.split(" | ")[4] == "–"  # the baseline has no difference to itself
    der_row = next(row for row in rows[1:] if row.startswith("| der |"))
    der, er = (float(r.split(" | ")[3].strip("*").split()[0]) for r in (der_row, er_row))
    assert float(der_row.split(" | ")[4]) == pytest.approx(der - er, abs=1e-4)
    assert len(list(out.glob("cells/*/*/memory.png"))) == 3  # every cell pictures its memory, as `ccl run` does


def cell_runs(out: Path) -> dict[str, tuple[str, int]]:
    """Each cell's run folder and the time its results were written."""
    return {cell.name: (run.name, (run / "results.json").stat().st_mtime_ns)
            for cell in (out / "cells").iterdir() for run in [only_run_folder(cell)]}


def test_a_memory_size_axis_runs_each_cell_once_and_draws_the_curve(tmp_path, monkeypatch):
    from ccl.report import equivalent_size
    monkeypatch.chdir(tmp_path)  # the default comparison folder is ./comparisons/...

    def sized(sizes: str):
        return CliRunner().invoke(compare, [*TINY, "--memory", "random,herding", "--seeds", "1", "--mem-size", sizes])

    first = sized("10,20")
    assert first.exit_code == 0, first.output
    assert "2 memories x 2 memory sizes x 1 seeds" in first.output
    [out] = list((tmp_path / "comparisons").iterdir())
    assert out.name.endswith("-split-digits-m10-20")
    runs = cell_runs(out)
    assert sorted(runs) == ["herding-m10-s0", "herding-m20-s0", "random-m10-s0", "random-m20-s0"]
    grid = json.loads((out / "grid.json").read_text())
    assert grid["mem_sizes"] == [10, 20] and "mem_size" not in grid["settings"]
    summary = json.loads((out / "comparison.json").read_text())
    groups = {(g["axes"]["memory"], g["axes"]["mem_size"]): g for g in summary["memories"]}
    assert sorted(groups) == [("herding", 10), ("herding", 20), ("random", 10), ("random", 20)]
    assert all(g["memory_images"]["mean"] == size for (_, size), g in groups.items())
    assert "curve.png" in summary["figures"] and (out / "curve.png").read_bytes().startswith(b"\x89PNG")
    from PIL import Image
    with Image.open(out / "curve.png") as image:
        assert image.text["Title"].startswith("Final accuracy against memory size")
    # every row measured against herding's curve of the same comparison
    final = {key: g["final_average_accuracy"]["mean"] for key, g in groups.items()}
    for (memory, size), g in groups.items():
        relation, herding_size = equivalent_size([10, 20], [final["herding", 10], final["herding", 20]],
                                                 final[memory, size])
        assert g["herding_equivalent"] == pytest.approx({"relation": relation, "size": herding_size,
                                                         "worth": herding_size / size})
    md = (out / "comparison.md").read_text()
    rows = [line.split(" | ") for line in md.splitlines() if line.startswith("| ")]
    assert rows[0][:3] == ["| memory", "mem_size", "seeds done / failed"] and "Δ random" in rows[0]
    assert [row[1] for row in rows[1:5]] == ["10", "10", "20", "20"]  # a block per size
    herding_10 = next(row for row in rows[1:5] if row[0] == "| herding" and row[1] == "10")
    assert float(herding_10[4]) == pytest.approx(final["herding", 10] - final["random", 10], abs=1e-4)  # same size
    assert "## Herding-equivalent size" in md

    # The same command again: nothing runs. With a third size: only its cells run.
    again = sized("10,20")
    assert again.exit_code == 0, again.output
    assert again.output.count("finished before") == 4 and ": finished in" not in again.output
    assert cell_runs(out) == runs
    more = sized("10,20,30")
    assert more.exit_code == 0, more.output
    assert list((tmp_path / "comparisons").iterdir()) == [out]
    assert more.output.count("finished before") == 4 and more.output.count(": finished in") == 2
    now = cell_runs(out)
    assert {k: v for k, v in now.items() if k in runs} == runs
    assert sorted(set(now) - set(runs)) == ["herding-m30-s0", "random-m30-s0"]
    assert json.loads((out / "grid.json").read_text())["mem_sizes"] == [10, 20, 30]
    summary = json.loads((out / "comparison.json").read_text())
    assert len(summary["memories"]) == 6 and all("herding_equivalent" in g for g in summary["memories"])
