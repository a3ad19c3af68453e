"""Comparison reports from saved results: tables hold the fixtures' means and stds, every
figure is written and readable, and `ccl report` rebuilds it all without training.

Fixture (tests/fixtures/comparison): split-digits, 3 experiences; random and dm with
seeds 0 and 1 finished, dm seed 2 failed, joint seed 0 finished.
"""
import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ccl.cli_compare import report
from ccl.report import collect_runs, data_span, group_runs, image_mosaic, summary_table, to_pixels, write_report

FIXTURE = Path(__file__).parent / "fixtures" / "comparison"
PNG = b"\x89PNG\r\n\x1a\n"


def run_folder(cells: Path, cell: str) -> Path:
    """The run folder in cell folder `cells/<cell>`."""
    return next(d for d in (cells / cell).iterdir() if d.is_dir())


def fixture_results(memory: str) -> list[dict]:
    return [json.loads((run_folder(FIXTURE / "cells", f"{memory}-s{s}") / "results.json").read_text()) for s in (0, 1)]


@pytest.fixture
def comparison(tmp_path) -> Path:
    """The fixture comparison, copied, with a float memory for random and a uint8 one for dm."""
    root = tmp_path / "comparison"
    shutil.copytree(FIXTURE, root)
    g = torch.Generator().manual_seed(0)
    order = [4, 1, 0, 3, 2, 5]
    labels = torch.tensor(order).repeat_interleave(3)  # (18,) three per class
    torch.save({"images": torch.randn(18, 1, 8, 8, generator=g), "labels": labels, "classes": order,
                "mean": (0.3,), "std": (0.4,), "class_names": [str(c) for c in range(10)], "dtype": "float32"},
               run_folder(root / "cells", "random-s0") / "memory.pt")
    torch.save({"images": torch.randint(0, 256, (18, 1, 8, 8), generator=g, dtype=torch.uint8), "labels": labels,
                "classes": order, "mean": (0.3,), "std": (0.4,), "class_names": [str(c) for c in range(10)],
                "dtype": "uint8"}, run_folder(root / "cells", "dm-s0") / "memory.pt")
    return root


def test_report_tables_hold_means_and_stds_of_the_fixtures(comparison):
    write_report([comparison])
    summary = json.loads((comparison / "comparison.json").read_text())
    groups = {g["label"]: g for g in summary["memories"]}
    assert list(groups) == ["random", "dm", "joint"]  # grid.json's order
    md = (comparison / "comparison.md").read_text()
    for memory in ("random", "dm"):
        res, g = fixture_results(memory), groups[memory]
        for key in ("final_average_accuracy", "average_forgetting", "final_bwt"):
            values = [r[key] for r in res]
            assert g[key]["mean"] == pytest.approx(statistics.mean(values))
            assert g[key]["std"] == pytest.approx(statistics.stdev(values))
        for key in ("memory_update_seconds", "train_seconds"):
            totals = [sum(r[key]) for r in res]
            assert g[key]["mean"] == pytest.approx(statistics.mean(totals))
            assert g[key]["std"] == pytest.approx(statistics.stdev(totals))
        assert g["memory_bytes"]["mean"] == res[0]["memory_size"]["bytes"]
        acc = [r["final_average_accuracy"] for r in res]
        row = next(line for line in md.splitlines() if line.startswith(f"| {memory} |"))
        assert f"{statistics.mean(acc):.4f} ± {statistics.stdev(acc):.4f}" in row
        assert f"| {res[0]['memory_size']['images']} | {res[0]['memory_size']['bytes']:,} |" in row
        seen = [r["seen_accuracy"] for r in res]
        assert g["seen_accuracy"]["mean"] == pytest.approx([statistics.mean(s) for s in zip(*seen)])
        assert g["accuracy_matrix"][2][1] == pytest.approx(statistics.mean(r["accuracy_matrix"][2][1] for r in res))
    assert groups["dm"]["seeds"] == {"finished": [0, 1], "failed": [2], "diverged": [], "unfinished": []}
    assert "| dm | 2 / 1 |" in md and "RuntimeError: injected failure" in md
    assert groups["joint"]["joint"] and groups["joint"]["final_average_accuracy"]["std"] is None


def test_the_figures_order_groups_as_the_table_does(comparison):
    from ccl.report import _as_the_table_sorts
    summary = write_report([comparison])
    md = (comparison / "comparison.md").read_text()
    rows = [line.split(" | ")[0].strip("| ") for line in md.splitlines() if line.startswith("| ")][1:]  # no header
    assert [g["label"] for g in _as_the_table_sorts(summary["memories"])] == rows == ["joint", "dm", "random"]


def test_a_group_with_a_diverged_run_is_never_ranked(comparison):
    """joint, the best group, gets a second seed that diverged: its survivor's mean would
    still be the best, but it is not ranked: last, not in bold, its diverged run named."""
    from ccl.report import _as_the_table_sorts
    survivor = run_folder(comparison / "cells", "joint-s0")
    diverged = comparison / "cells" / "joint-s1" / survivor.name.replace("-s0", "-s1")
    shutil.copytree(survivor, diverged)
    config = json.loads((diverged / "config.json").read_text())
    config["run"]["seed"] = 1
    (diverged / "config.json").write_text(json.dumps(config))
    (diverged / "results.json").unlink()  # as a diverged run leaves it
    error = "the training loss exploded to 5.69e+12 (above 1e+04) in experience 0 by step 18: try a smaller --lr"
    (diverged / "status.json").write_text(json.dumps({"status": "diverged", "error": error}))
    summary = write_report([comparison])
    groups = {g["label"]: g for g in summary["memories"]}
    assert groups["joint"]["seeds"] == {"finished": [0], "failed": [], "diverged": [1], "unfinished": []}
    best = max(groups.values(), key=lambda g: g["final_average_accuracy"]["mean"])
    assert best["label"] == "joint"  # its survivor alone would win
    md = (comparison / "comparison.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == ["dm", "random", "joint"]
    assert [g["label"] for g in _as_the_table_sorts(summary["memories"])] == ["dm", "random", "joint"]
    assert "**" in rows[0] and "**" not in rows[2] and "| joint | 1 / 1 (1 diverged) |" in rows[2]
    assert f"- joint seed 1: diverged — {error}" in md


def test_report_draws_every_figure(comparison):
    summary = write_report([comparison])
    expected = {"final.png", "accuracy.png", "matrix-random.png", "matrix-dm.png", "matrix-joint.png",
                "memory-random.png", "memory-dm.png"}  # joint keeps no memory
    assert set(summary["figures"]) == expected and summary["figures"][0] == "final.png"  # the answer first
    for name in expected:
        data = (comparison / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 2000
    assert not list(comparison.glob(".*.tmp"))  # no temporary file left behind
    (run_folder(comparison / "cells", "dm-s0") / "memory.pt").unlink()
    summary = write_report([comparison])
    assert not (comparison / "memory-dm.png").exists()  # a figure of the earlier report that no longer applies


def _strategy_copy(folder: Path, strategy: str, seeds: tuple[int, ...]) -> Path:
    """The fixture's random and dm cells of `seeds`, every run marked as run by `strategy`."""
    for cell in FIXTURE.glob("cells/*-s*"):
        memory, seed = cell.name.rsplit("-s", 1)
        if memory in ("random", "dm") and int(seed) in seeds:
            shutil.copytree(cell, folder / "cells" / cell.name)
    for path in folder.rglob("config.json"):
        config = json.loads(path.read_text())
        config["run"]["strategy"] = strategy
        path.write_text(json.dumps(config))
    return folder


def _png_title(path: Path) -> str:
    from PIL import Image
    with Image.open(path) as image:
        return image.text.get("Title", "")  # the figure's title, written as a PNG text chunk


@pytest.mark.parametrize("seeds", [(0, 1), (0,)])
def test_a_two_by_two_comparison_has_its_figures_and_a_band_only_with_seeds_to_span(tmp_path, seeds):
    """Strategies x memories (er, der++ x random, dm): final.png and accuracy.png are
    written, one panel per strategy; the title promises a min-max band only when a group
    has two seeds."""
    dirs = [_strategy_copy(tmp_path / name, name, seeds) for name in ("er", "der++")]
    summary = write_report(dirs, tmp_path / "report")
    assert sorted(g["label"] for g in summary["memories"]) == ["der++ dm", "der++ random", "er dm", "er random"]
    for name in ("final.png", "accuracy.png"):
        data = (tmp_path / "report" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 2000
    title = _png_title(tmp_path / "report" / "accuracy.png")
    assert "seen so far" in title and ("min–max" in title) == (len(seeds) > 1)


def test_pixels_are_denormalised_or_decoded():
    images = torch.tensor([-1.0, 0.0, 2.0]).view(3, 1, 1, 1)  # (N, C, H, W)
    assert to_pixels(images, (0.5,), (0.25,)).flatten().tolist() == [0.25, 0.5, 1.0]  # x * std + mean, clipped
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1)
    assert to_pixels(pixels, (0.5,), (0.25,)).flatten().tolist() == pytest.approx([0.0, 0.2, 1.0])


def test_mosaic_has_one_row_per_class_in_arrival_order_and_caps_columns():
    labels = torch.tensor([7] * 12 + [2] * 3)
    pixels = torch.cat([torch.full((12, 1, 4, 4), 0.5), torch.zeros(3, 1, 4, 4)])
    mosaic, rows, counts = image_mosaic(pixels, labels, classes=[7, 2], max_cols=10)
    assert rows == [7, 2] and counts == [12, 3]
    assert mosaic.shape == (2 * 5 + 1, 10 * 5 + 1, 1)  # 4-pixel images and 1-pixel gaps
    assert mosaic[1:5, 1:5].max() == 0.5 and mosaic[6:10, 1:5].max() == 0.0
    assert (mosaic[6:10, 16:20] == 1).all()  # class 2 has 3 images: the 4th place is background


def test_runs_differing_in_a_setting_are_not_averaged_together(tmp_path):
    shutil.copytree(FIXTURE / "cells", tmp_path / "runs")
    config_path = run_folder(tmp_path / "runs", "random-s1") / "config.json"
    config = json.loads(config_path.read_text())
    config["run"]["epochs"] = 3
    config_path.write_text(json.dumps(config))
    groups = group_runs(collect_runs([tmp_path / "runs"]))
    assert [g for g in groups if g.startswith("random")] == ["random epochs=1", "random epochs=3"]
    assert "dm" in groups  # dm's runs agree, so its label stays plain
    # The memory size is an axis of the whole comparison: every row names it, to pair size by size.
    config["run"]["mem_size"] = 50
    config_path.write_text(json.dumps(config))
    groups = group_runs(collect_runs([tmp_path / "runs"]))
    assert sorted(groups) == ["dm mem_size=20", "joint mem_size=20", "random epochs=1 mem_size=20",
                              "random epochs=3 mem_size=50"]


def test_a_seed_run_twice_counts_once_preferring_the_finished_run(tmp_path):
    shutil.copytree(FIXTURE / "cells", tmp_path / "runs")
    retry = tmp_path / "runs" / "dm-s2" / "20260102-000000-split-digits-dm-s2"
    shutil.copytree(run_folder(tmp_path / "runs", "dm-s1"), retry)
    config = json.loads((retry / "config.json").read_text())
    config["run"]["seed"] = 2
    (retry / "config.json").write_text(json.dumps(config))
    dm = group_runs(collect_runs([tmp_path / "runs"]))["dm"]
    assert [(r.seed, r.status) for r in dm] == [(0, "finished"), (1, "finished"), (2, "finished")]


def test_ccl_report_rebuilds_from_a_plain_folder_of_runs(tmp_path):
    shutil.copytree(FIXTURE / "cells", tmp_path / "runs")
    result = CliRunner().invoke(report, [str(tmp_path / "runs"), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert "| random | 2 / 0 |" in result.output
    assert (tmp_path / "report" / "comparison.md").exists() and (tmp_path / "report" / "accuracy.png").exists()
    summary = json.loads((tmp_path / "report" / "comparison.json").read_text())
    assert summary["memories"][0]["runs"][0]["folder"].startswith("../runs/")  # paths relative to the report


def test_ccl_report_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for args, message in (([str(tmp_path / "empty")], "no run folders found"),
                          ([str(tmp_path / "missing")], "no such folder"),
                          ([str(FIXTURE), str(FIXTURE / "cells")], "needs --out")):
        result = CliRunner().invoke(report, args)
        assert result.exit_code == 2 and result.output.startswith("error: ") and message in result.output
        assert result.output.count("\n") == 1


def test_summary_table_of_one_run():
    table = summary_table(run_folder(FIXTURE / "cells", "random-s0"))
    assert "final average accuracy 0.4667" in table and table.count("\n") == 5


def test_memory_settings_given_beyond_the_preset_are_reported(tmp_path):
    shutil.copytree(FIXTURE / "cells", tmp_path / "runs")
    for seed in (0, 1, 2):
        path = run_folder(tmp_path / "runs", f"dm-s{seed}") / "config.json"
        config = json.loads(path.read_text())
        config["run"]["memory_settings"] = {"iterations": 30}
        path.write_text(json.dumps(config))
    write_report([tmp_path / "runs"])
    assert "Memory settings changed from their presets: dm: iterations=30." in \
        (tmp_path / "runs" / "comparison.md").read_text()


def test_a_report_never_writes_into_a_run_folder_unasked(tmp_path, tiny_run):
    from ccl.errors import CclError
    from ccl.experiment import make_config, prepare
    from ccl.runner import run
    run_dir = run(prepare(make_config(**tiny_run)), tmp_path / "runs", progress=False)
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(CclError, match="is a run folder; give --out"):
        write_report([run_dir])
    assert sorted(p.name for p in run_dir.iterdir()) == before
    summary = write_report([run_dir], tmp_path / "report")
    assert (tmp_path / "report" / "comparison.md").exists() and summary["memories"]


def test_runs_of_several_scenarios_are_labelled_by_scenario_and_compared_within_it(tmp_path):
    from ccl.report import RunRecord, group_runs
    records = []
    for i, (scenario, memory, epochs, mem_size) in enumerate([("split-digits", "random", 10, 20),
                                                              ("split-cifar10", "random", 5, 200),
                                                              ("split-cifar10", "random", 5, 500)]):
        (tmp_path / str(i)).mkdir()
        records.append(RunRecord(tmp_path / str(i), memory, 0, "finished",
                                 settings={"scenario": scenario, "epochs": epochs, "mem_size": mem_size}))
    assert sorted(group_runs(records)) == ["split-cifar10 random mem_size=200", "split-cifar10 random mem_size=500",
                                           "split-digits random"]
    assert list(group_runs(records[1:2])) == ["random"]  # one scenario: no prefix


def test_equivalent_size_reads_the_curve_in_log_size_and_never_extrapolates():
    from ccl.report import equivalent_size
    sizes, accuracy = [20, 50, 100, 200], [0.30, 0.40, 0.45, 0.50]
    # half way from 0.40 to 0.45 is half way from log 50 to log 100: sqrt(50 * 100)
    assert equivalent_size(sizes, accuracy, 0.425) == ("=", pytest.approx(math.sqrt(50 * 100)))
    assert equivalent_size(sizes, accuracy, 0.33) == ("=", pytest.approx(20 * 2.5 ** 0.3))
    assert equivalent_size(sizes, accuracy, 0.45) == ("=", 100.0)  # a size run, exactly
    assert equivalent_size(sizes, accuracy, 0.30) == ("=", 20.0)
    assert equivalent_size(sizes, accuracy, 0.25) == ("<", 20.0)  # herding at its smallest does better
    assert equivalent_size(sizes, accuracy, 0.55) == (">", 200.0)  # herding at its largest does worse
    # not monotone: the first upward crossing, the smallest size that does as well
    assert equivalent_size([20, 50, 100, 200], [0.30, 0.50, 0.40, 0.60], 0.45) == \
        ("=", pytest.approx(20 * 2.5 ** 0.75))
    assert equivalent_size([20], [0.3], 0.3) == ("=", 20.0)
    with pytest.raises(ValueError):
        equivalent_size([20, 50], [0.3], 0.3)


def _sized_copy(folder: Path, mem_size: int, finals: dict[str, float]) -> Path:
    """The fixture's random and dm cells of seeds 0 and 1 (dm renamed herding), every run
    given `mem_size` and, for each memory, final accuracy finals[memory] +- 0.01 by seed."""
    for memory, name in (("random", "random"), ("dm", "herding")):
        for seed in (0, 1):
            run = run_folder(shutil.copytree(FIXTURE / "cells" / f"{memory}-s{seed}",
                                             folder / "cells" / f"{name}-s{seed}"), "")
            config = json.loads((run / "config.json").read_text())
            config["run"].update(memory=name, mem_size=mem_size)
            (run / "config.json").write_text(json.dumps(config))
            results = json.loads((run / "results.json").read_text())
            results.update(memory=name, final_average_accuracy=finals[name] + (0.01 if seed else -0.01))
            (run / "results.json").write_text(json.dumps(results))
    return folder


def test_ccl_report_over_folders_of_single_sizes_draws_the_curve_and_the_equivalents(tmp_path):
    small = _sized_copy(tmp_path / "m20", 20, {"random": 0.40, "herding": 0.50})
    large = _sized_copy(tmp_path / "m50", 50, {"random": 0.60, "herding": 0.70})
    result = CliRunner().invoke(report, [str(small), str(large), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "report" / "comparison.json").read_text())
    assert "curve.png" in summary["figures"]
    assert _png_title(tmp_path / "report" / "curve.png").startswith("Final accuracy against memory size")
    equivalent = {(g["axes"]["memory"], g["axes"]["mem_size"]): g["herding_equivalent"] for g in summary["memories"]}
    assert equivalent == {
        ("herding", 20): {"relation": "=", "size": 20.0, "worth": 1.0},
        ("herding", 50): {"relation": "=", "size": 50.0, "worth": 1.0},
        ("random", 20): {"relation": "<", "size": 20.0, "worth": 1.0},
        # 0.60 is half way from herding's 0.50 at 20 to 0.70 at 50: sqrt(20 * 50) = 31.6
        ("random", 50): {"relation": "=", "size": pytest.approx(math.sqrt(20 * 50)),
                         "worth": pytest.approx(math.sqrt(20 * 50) / 50)}}
    md = (tmp_path / "report" / "comparison.md").read_text()
    assert "| random | 50 | 0.6000 ± 0.0141 | 32 | 0.63 |" in md and "| random | 20 | 0.4000 ± 0.0141 | < 20 | < 1.0 |" in md
    # one size, or no herding: neither the curve nor the equivalents
    summary = write_report([small], tmp_path / "one")
    assert "curve.png" not in summary["figures"] and not any("herding_equivalent" in g for g in summary["memories"])
    assert "Herding-equivalent" not in (tmp_path / "one" / "comparison.md").read_text()
    for folder in (small, large):
        for seed in (0, 1):
            shutil.rmtree(folder / "cells" / f"herding-s{seed}")
    summary = write_report([small, large], tmp_path / "two")
    assert "curve.png" in summary["figures"]
    assert [g.get("herding_equivalent") for g in summary["memories"]] == [None, None]


def test_final_figure_axis_spans_the_data_not_zero_to_one():
    """final.png zooms each panel onto its values: 0.958 and 0.975 must sit far apart, and
    forgetting of 0.01-0.02 must fill its own panel instead of a sliver of 0 to 1."""
    lo, hi = data_span([0.958, 0.975, 0.961])
    assert 0.95 < lo < 0.958 and 0.975 < hi < 1.0
    assert (0.975 - 0.958) / (hi - lo) > 0.4  # the spread is most of the axis, not 1.7% of it
    lo, hi = data_span([0.012, 0.023])
    assert 0.0 < lo < 0.012 and 0.023 < hi < 0.05
    lo, hi = data_span([-0.01, 0.02])  # forgetting can be negative (a task got better)
    assert lo < -0.01 and hi > 0.02
    lo, hi = data_span([0.5, 0.5])  # one value: still an axis around it
    assert lo < 0.5 < hi and hi - lo >= 0.01
