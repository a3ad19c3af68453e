"""A run preset's per-strategy tables (`[strategies.NAME]`): each strategy's cells get its
own table, the command line wins over it and says so, and a bad table is one line before
torch loads."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ccl.cli import main
from ccl.cli_options import config_values
from ccl.compare import Grid, strategy_values

ROOT = Path(__file__).parent.parent
MAMMOTH = ROOT / "configs" / "runs" / "mammoth-seq-cifar10.toml"
# mammoth's utils/best_args.py, 'seq-cifar10' at buffer 200 (er, derpp), and for er_ace its
# models/config/er_ace.yaml: what the preset must carry
MAMMOTH_200 = {"er": (0.1, {}), "der++": (0.03, {"alpha": 0.1, "beta": 0.5}), "er-ace": (0.1, {})}
# mammoth's protocol made tiny: split-digits, a small ConvNet, one epoch, no augmentation
TINY = ["--scenario", "split-digits", "--model", "convnet", "--width", "16", "--epochs", "1",
        "--train-per-class", "20", "--mem-size", "20", "--mem-batch", "8", "--batch-size", "16",
        "--stream-augment", "none", "--mem-augment", "none", "--quiet"]


def run_config(cell: Path) -> dict:
    (config,) = cell.glob("*/config.json")
    return json.loads(config.read_text())


def test_compare_gives_each_strategy_mammoths_published_settings(tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(main, ["compare", "--config", str(MAMMOTH), "--strategy", "er,der++,er-ace",
                                       "--memory", "reservoir", "--seeds", "1", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    for strategy, (lr, settings) in MAMMOTH_200.items():
        config = run_config(out / "cells" / f"{strategy}-reservoir-s0")
        assert (config["run"]["strategy"], config["run"]["lr"]) == (strategy, lr)
        assert (config["run"]["momentum"], config["run"]["weight_decay"]) == (0.0, 0.0)  # the preset's, shared
        assert config["strategy_settings"].items() >= settings.items()
    recorded = json.loads((out / "grid.json").read_text())["settings"]["strategy_tables"]
    assert recorded["er"] == {"lr": 0.1} and set(recorded) == set(MAMMOTH_200)  # a changed table is another grid


def test_the_command_line_wins_over_the_preset_table_and_says_so(tmp_path):
    result = CliRunner().invoke(main, ["run", "--config", str(MAMMOTH), "--strategy", "der++", "--lr", "0.05",
                                       "--strategy-set", "alpha=0.2", "--memory", "reservoir",
                                       "--runs-dir", str(tmp_path), *TINY])
    assert result.exit_code == 0, result.output
    assert "note: --lr 0.05 overrides the preset's lr 0.03 for der++\n" in result.output
    assert "note: --strategy-set alpha=0.2 overrides the preset's alpha 0.1 for der++\n" in result.output
    config = run_config(tmp_path)
    assert config["run"]["lr"] == 0.05
    assert (config["strategy_settings"]["alpha"], config["strategy_settings"]["beta"]) == (0.2, 0.5)


def test_on_a_strategy_axis_each_table_keeps_to_its_strategy_and_the_command_line_to_its_keys():
    values, tables = config_values({"strategy": "er,der++", "lr": 0.05, "strategy_overrides": ("alpha=0.2",)},
                                   MAMMOTH, (), False, None)
    assert tables == {"er": {}, "der++": {"beta": 0.5}}  # a-gem's and the others' tables: not run here
    grid = Grid(("random",), (0,), {k: v for k, v in values.items() if k != "strategy"}, Path("."),
                ("er", "der++"), tables)
    er, derpp = grid.cell_values("random", 0, "er"), grid.cell_values("random", 0, "der++")
    assert (er["lr"], er["strategy_settings"]) == (0.05, {})  # alpha is not er's
    assert (derpp["lr"], derpp["strategy_settings"]) == (0.05, {"alpha": 0.2, "beta": 0.5})
    assert strategy_values({"strategy_settings": {"alpha": 1.0, "temperature": 2.0}}, "er-ace") == \
        {"strategy_settings": {"temperature": 2.0}}


@pytest.mark.parametrize("table, message", [
    ('[strategies.er]\nrate = 0.1\n', "[strategies.er] has an unknown key 'rate'; known keys: lr, momentum"),
    ('[strategies.er]\nalpha = 0.1\n', "[strategies.er] has an unknown key 'alpha'"),  # der's, not er's
    ('[strategies.magic]\nlr = 0.1\n', "[strategies.magic] names no strategy; choose one of: er,"),
    ('[strategies."der++"]\nlr = -1\n', '[strategies."der++"]: --lr must be in (0, 10.0], got -1.0'),
    ('strategies = "er"\n', "strategies should hold one table a strategy"),
])
def test_a_bad_table_is_one_line(tmp_path, table, message):
    preset = tmp_path / "preset.toml"
    preset.write_text(f'scenario = "split-digits"\n{table}')
    result = CliRunner().invoke(main, ["run", "--config", str(preset), "--strategy", "der++",
                                       "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and result.output.startswith(f"error: {preset}: ")
    assert message in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_a_bad_table_is_refused_before_torch_loads(tmp_path):
    preset = tmp_path / "preset.toml"
    preset.write_text('[strategies.er]\nlr_rate = 0.1\n')
    probe = ("import sys\nfrom ccl.cli import main\n"
             "try:\n    main(['compare', '--config', sys.argv[1], '--strategy', 'er,der'])\n"
             "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules, 'avalanche' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe, str(preset)], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split() == ["2", "False", "False"], out.stderr
    assert "[strategies.er] has an unknown key 'lr_rate'" in out.stderr and out.stderr.count("\n") == 1


def test_a_run_preset_is_named_from_any_folder_and_a_path_wins(tmp_path, monkeypatch):
    from ccl.errors import CclError
    from ccl.resources import run_preset
    monkeypatch.chdir(tmp_path)  # no configs/ here
    shipped = ROOT / "configs" / "runs" / "cpu-quick.toml"
    assert run_preset("cpu-quick") == run_preset("cpu-quick.toml") == run_preset(Path("cpu-quick")) == shipped
    (tmp_path / "cpu-quick").write_text('width = 8\n')  # a file of that name here: a path wins
    assert run_preset("cpu-quick") == Path("cpu-quick")
    with pytest.raises(CclError, match=r"^--config cpu-protocl: no such file, nor a run preset of that name; "
                                       r"did you mean cpu-protocol\?$"):
        run_preset("cpu-protocl")
    with pytest.raises(CclError, match="elsewhere/cpu-quick.toml: no such file, .*; did you mean cpu-quick"):
        run_preset("elsewhere/cpu-quick.toml")  # a path that is not there is not a name
    with pytest.raises(CclError, match="; the run presets: cpu-long, cpu-online, cpu-protocol, cpu-quick, mammoth"):
        run_preset("settings")
    result = CliRunner().invoke(main, ["run", "--config", "cpu-protocl", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "did you mean cpu-protocol?" in result.output


def test_an_installed_package_lists_and_runs_its_presets_from_any_folder(tmp_path):
    """`pip install .` (not editable): the wheel carries the run presets, `ccl list` shows
    them from a folder outside the tree and `--config cpu-quick` runs with the preset's
    settings. The wheel is built from a copy of the sources (a build writes beside them)
    and unpacked, as pip installs a pure-Python wheel."""
    import shutil
    import zipfile
    source = tmp_path / "source"
    for part in ("ccl", "configs", "scenarios"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "wheel"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("ccl-*.whl")
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.toml")}
    assert {f"ccl/{name}" for name in shipped} <= {p.relative_to(installed).as_posix()
                                                    for p in installed.rglob("*.toml")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(installed), "OMP_NUM_THREADS": "1"}

    def ccl(*args):
        return subprocess.run([sys.executable, "-m", "ccl.cli", *args], cwd=elsewhere, env=env, capture_output=True,
                              text=True)
    listed = ccl("list")
    assert listed.returncode == 0, listed.stderr
    runs = listed.stdout.split("run presets (--config NAME):", 1)[1]
    assert all(f"  {name} " in runs for name in ("cpu-quick", "cpu-protocol", "cpu-long", "mammoth-seq-cifar10"))
    ran = ccl("run", "--config", "cpu-quick", "--scenario", "split-digits", "--experiences", "2", "--epochs", "1",
              "--train-per-class", "20", "--quiet")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    (config,) = (elsewhere / "runs").glob("*/config.json")
    settings = json.loads(config.read_text())
    assert settings["argv"][0] == str(installed / "ccl" / "cli.py")  # the installed copy ran, not the tree
    assert (settings["run"]["width"], settings["run"]["mem_size"], settings["run"]["test_per_class"]) == (32, 100, 100)
