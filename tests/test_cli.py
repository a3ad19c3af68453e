"""Bad input ends in one line, a non-zero exit and no run folder."""
import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from ccl.cli import main

TINY = ["--epochs", "1", "--train-per-class", "20", "--mem-size", "20", "--width", "16", "--quiet"]


def invoke(tmp_path, *args):
    result = CliRunner().invoke(main, list(args) + ["--runs-dir", str(tmp_path / "runs")])
    return result


@pytest.mark.parametrize("args, message", [
    (["--scenario", "split-mnist"], "unknown scenario 'split-mnist'"),
    (["--memory", "magic"], "unknown memory 'magic'"),
    (["--mem-size", "5"], "--mem-size 5 is smaller than the number of classes (10)"),
    (["--epochs", "0"], "epochs must be at least 1"),
    (["--mem-batch", "-1"], "mem-batch must not be negative"),
    (["--lr", "-0.1"], "lr must be in"),
    (["--class-order", "0,1,2"], "--class-order must list each class"),
    (["--scenario", "split-cifar10", "--no-download", "--data-dir", "/nonexistent/data"],
     "--data-dir /nonexistent/data: no such folder"),
    (["--scenario", "split-folder"], "give --data-dir"),
    (["--memory", "random", "--set", "iterations=3"], "memory 'random' takes no settings"),
    (["--memory", "avalanche-reservoir", "--mem-augment", "dsa"], "--mem-augment applies to the on-device memories"),
    (["--memory", "avalanche-reservoir", "--mem-dtype", "uint8"], "--mem-dtype applies to the on-device memories"),
    (["--finetune-epochs", "-2"], "finetune-epochs must not be negative"),
    (["--memory", "none", "--finetune-epochs", "2"], "memory 'none' under --protocol replay has nothing to finetune"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, args, message):
    result = invoke(tmp_path, "run", *args)
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and message in result.output
    assert result.output.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_missing_cifar_says_what_to_pass_and_downloads_only_when_asked(tmp_path, monkeypatch):
    import ccl.data.cifar as cifar
    asked = []
    monkeypatch.setattr(cifar, "_download", lambda spec, folder: asked.append(folder) or (None, "no network"))
    monkeypatch.setenv("CCL_DATA_DIR", str(tmp_path / "empty"))
    result = invoke(tmp_path, "run", "--scenario", "split-cifar10")
    assert result.exit_code == 2 and result.output.count("\n") == 1 and not asked
    assert f"cifar10 not found in {tmp_path / 'empty'}" in result.output
    assert "--data-dir DIR" in result.output and "tar -xzf cifar-10-python.tar.gz -C DIR" in result.output
    assert "--download" in result.output and not (tmp_path / "runs").exists()
    assert invoke(tmp_path, "run", "--scenario", "split-cifar10", "--no-download").exit_code == 2 and not asked
    result = invoke(tmp_path, "run", "--scenario", "split-cifar10", "--download")
    assert result.exit_code == 2 and asked == [tmp_path / "empty"] and "no network" in result.output
    result = invoke(tmp_path, "run", "--download", "--no-download")
    assert result.exit_code == 2 and "contradict" in result.output


def test_unreadable_config_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [unclosed")
    result = invoke(tmp_path, "run", "--config", str(bad))
    assert result.exit_code == 2 and "unreadable config file" in result.output
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("epoch = 3\n")
    result = invoke(tmp_path, "run", "--config", str(unknown))
    assert result.exit_code == 2 and "unknown key 'epoch'" in result.output
    wrong_type = tmp_path / "type.toml"
    wrong_type.write_text('epochs = "three"\n')
    result = invoke(tmp_path, "run", "--config", str(wrong_type))
    assert result.exit_code == 2 and "run.epochs: expected an integer" in result.output
    assert not (tmp_path / "runs").exists()


def test_corrupt_data_folder(tmp_path):
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            (tmp_path / "data" / split / name / "0.png").write_bytes(b"not an image")
    result = invoke(tmp_path, "run", "--scenario", "split-folder", "--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 2 and "no readable images" in result.output
    assert not (tmp_path / "runs").exists()


def test_run_prints_summary_and_config_file_applies(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('memory = "herding"\nseed = 4\n')
    result = invoke(tmp_path, "run", "--config", str(config), *TINY)
    assert result.exit_code == 0, result.output
    assert "final average accuracy" in result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.endswith("split-digits-herding-s4")


def test_a_logged_run_prints_each_experience_once_and_its_csv_logs_hold_values(tmp_path):
    import csv

    result = invoke(tmp_path, "run", *TINY)  # CliRunner's stdout is not a terminal: as in a log file
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("experience ")] == \
        [f"experience {i}" for i in range(5)]
    assert not any(line.startswith("exp  classes") for line in lines) and "final average accuracy" in result.output
    (logs,) = (tmp_path / "runs").glob("*/logs")
    with open(logs / "training_results.csv") as f:
        training = list(csv.DictReader(f))
    assert list(training[0]) == ["training_exp", "epoch", "training_accuracy", "training_loss"]
    assert len(training) == 5 and all(float(r["training_loss"]) > 0 for r in training)
    assert any(float(r["training_accuracy"]) > 0 for r in training)
    with open(logs / "eval_results.csv") as f:
        evaluated = list(csv.DictReader(f))
    assert len(evaluated) == 25 and all(float(r["eval_loss"]) > 0 for r in evaluated)


def test_the_header_names_the_device_and_a_gpu_sized_run_on_a_cpu_names_the_cpu_presets(tmp_path, tiny_run):
    import dataclasses

    import numpy as np

    from ccl.data import ImageSet
    from ccl.experiment import cpu_advice, make_config, prepare
    result = invoke(tmp_path, "run", *TINY, "--device", "cpu")
    assert ", strategy er, on cpu (" in result.output.splitlines()[0]  # with its processor and threads
    assert "note: no GPU" not in result.output
    small = prepare(make_config(**tiny_run, device="cpu"))
    assert cpu_advice(small) is None
    labels = np.repeat(np.arange(10), 1001)  # one image a class more than the largest CPU preset's
    large = ImageSet("large", [str(c) for c in range(10)], np.zeros((len(labels), 8, 8, 1), np.uint8), labels,
                     small.data.test_x, small.data.test_y, small.data.mean, small.data.std)
    advice = cpu_advice(dataclasses.replace(small, data=large))
    assert "1,001 training images a class at width 16" in advice and "\n" not in advice
    assert "--config cpu-protocol " in advice and "--config cpu-quick " in advice  # names that work from any folder


def test_list_and_help():
    runner = CliRunner()
    out = runner.invoke(main, ["list"]).output
    assert "split-cifar10" in out and "herding" in out and "reservoir" in out
    for cmd in (["--help"], ["run", "--help"], ["list", "--help"]):
        assert runner.invoke(main, cmd).exit_code == 0


def test_version_is_the_packages_and_loads_no_torch():
    from importlib.metadata import version
    probe = ("import sys\nfrom ccl.cli import main\n"
             "try:\n    main(['--version'])\n"
             "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules, 'avalanche' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.splitlines() == [f"ccl {version('ccl')}", "0 False False"], out.stdout + out.stderr


def test_a_bad_value_is_refused_before_torch_loads(tmp_path):
    """`--mem-size -5` is answered as fast as a misspelt name: neither loads torch."""
    probe = ("import sys\nfrom ccl.cli import main\n"
             "try:\n    main(['run', '--mem-size', '-5', '--runs-dir', sys.argv[1]])\n"
             "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules, 'avalanche' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "runs")], capture_output=True, text=True)
    assert out.stdout.split() == ["2", "False", "False"], out.stderr
    assert "--mem-size must be at least 1, got -5" in out.stderr and not (tmp_path / "runs").exists()


def test_list_names_every_shipped_preset_with_its_first_comment():
    out = CliRunner().invoke(main, ["list"]).output
    presets = out.split("memory presets", 1)[1]
    assert "  pad-learner          PAD against the replay learner's own trajectory\n" in presets
    assert "  mtt                  MTT (Cazenavette et al. 2022) = PAD with both filters off\n" in presets
    runs = presets.split("run presets (--config NAME):", 1)[1]
    assert all(f"  {name} " in runs for name in ("cpu-quick", "cpu-protocol", "cpu-long", "mammoth-seq-cifar10"))


def test_installed_package_finds_its_scenarios(tmp_path):
    """After a plain `pip install .`, scenarios/ and configs/ come from the package."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run([sys.executable, "-c", "import ccl, sys; print(ccl.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("ccl is not installed in this environment (source checkout only)")
    out = subprocess.run([sys.executable, "-m", "ccl.cli", "list"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "split-digits" in out and "split-cifar100" in out


def test_ci_runs_the_readme_test_command():
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    readme_commands = [line for line in (root / "README.md").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert len(readme_commands) >= 2 and "pytest" in readme_commands[1]
    assert readme_commands[1] in (root / ".ci" / "run").read_text().splitlines()


def test_condense_then_evaluate_tests_on_the_set_classes(tmp_path):
    out = tmp_path / "set.pt"
    runner = CliRunner()
    made = runner.invoke(main, ["condense", "--dataset", "digits", "--method", "random", "--ipc", "2",
                                "--classes", "0,1", "--out", str(out), "--quiet"])
    assert made.exit_code == 0, made.output
    scored = runner.invoke(main, ["evaluate", str(out), "--epochs", "30", "--networks", "1",
                                  "--set", "width=8", "--set", "depth=2", "--quiet"])
    assert scored.exit_code == 0, scored.output
    report = json.loads(out.with_suffix(".eval.json").read_text())
    assert report["test_classes"] == [0, 1]
    assert 0 < report["test_images"] < 120  # digits' test split holds about 36 per class
    assert report["mean"] > 0.5  # two classes: far above the 1/10 of testing on all ten


def test_condense_refuses_memory_context(tmp_path):
    out = tmp_path / "set.pt"
    result = CliRunner().invoke(main, ["condense", "--dataset", "digits", "--method", "pad", "--ipc", "1",
                                       "--set", "memory_context=true", "--out", str(out), "--quiet"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "memory_context" in result.output and "`ccl run` only" in result.output
    assert not out.exists()


def test_quick_run_options_and_memory_picture(tmp_path):
    result = invoke(tmp_path, "run", *TINY, "--test-per-class", "5")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "memory.png").exists() and " s, eval " in result.output  # the experience lines time each part
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run"]["test_per_class"] == 5 and config["data"]["test_images"] == 50  # 10 classes x 5
    result = invoke(tmp_path, "run", *TINY, "--mem-batch", "0")
    assert result.exit_code == 2 and "never replayed" in result.output


def test_condense_turns_off_what_needs_the_replay_learner(tmp_path):
    # configs/datadam.toml is made for `ccl run` (guide_weight > 0); standalone it condenses
    # without the learner, and asking for the guide explicitly is an error.
    out = tmp_path / "dd.pt"
    args = ["condense", "--scenario", "split-digits", "--method", "datadam", "--ipc", "1", "--set", "iterations=2",
            "--set", "width=8", "--quiet", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    saved = torch.load(out, weights_only=True)
    assert saved["settings"]["guide_weight"] == 0.0 and saved["dataset"] == "digits"  # the scenario's data set
    result = CliRunner().invoke(main, [*args, "--set", "guide_weight=5"])
    assert result.exit_code == 2 and "needs the replay learner" in result.output
    result = CliRunner().invoke(main, [*args, "--set", "holdout=0.1"])  # the memory's filler: `ccl run` only
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "`ccl run` only" in result.output
    result = CliRunner().invoke(main, [*args, "--set", "network=learner"])
    assert result.exit_code == 2 and "`ccl condense` has none" in result.output


def test_run_condenses_with_datadam_on_the_learners_architecture(tmp_path):
    """`--set network=learner`: DataDAM's random networks are copies of the run's own learner
    (ccl's ConvNet here, two blocks on 8x8 digits: its stages are their ReLUs at 8x8 and 4x4,
    and every stage but the last is matched), as `ccl.CondensedReplay` hands it its model."""
    result = invoke(tmp_path, "run", "--scenario", "split-digits", *TINY, "--memory", "datadam", "--set",
                    "network=learner", "--set", "iterations=2", "--set", "guide_weight=0")
    assert result.exit_code == 0, result.output
    run_dir = next((tmp_path / "runs").iterdir())
    assert json.loads((run_dir / "config.json").read_text())["memory_settings"]["network"] == "learner"
    updates = json.loads((run_dir / "results.json").read_text())["memory_updates"]
    assert [u["stages"] for u in updates] == [["blocks.0.2"]] * 5


def test_condense_starts_from_an_init_set(tmp_path):
    # The reference DataDAM starts from its own initial sets: `--init-set` hands a set file's
    # images to the method, which then moves them (here by a negligible step).
    runner = CliRunner()
    start, out = tmp_path / "start.pt", tmp_path / "dd.pt"
    made = runner.invoke(main, ["condense", "--dataset", "digits", "--method", "random", "--ipc", "2",
                                "--classes", "3,5", "--out", str(start), "--quiet"])
    assert made.exit_code == 0, made.output
    args = ["condense", "--dataset", "digits", "--method", "datadam", "--classes", "3,5", "--set", "iterations=2",
            "--set", "width=8", "--set", "lr_images=1e-9", "--quiet", "--out", str(out), "--init-set", str(start)]
    result = runner.invoke(main, [*args, "--ipc", "2"])
    assert result.exit_code == 0, result.output
    given, saved = torch.load(start, weights_only=True), torch.load(out, weights_only=True)
    torch.testing.assert_close(saved["images"], given["images"], atol=1e-5, rtol=0)
    assert saved["labels"].tolist() == [3, 3, 5, 5] and saved["init_set"] == str(start)
    # A set that does not fit is one line, before any condensing.
    for extra, says in [(["--ipc", "3"], "needs 3 image(s) of each class 3,5"),
                        (["--ipc", "2", "--classes", "5,3"], "grouped by class in that order"),
                        (["--ipc", "2", "--dataset", "cifar10", "--data-dir", str(tmp_path)], "a set of digits"),
                        (["--ipc", "2", "--classes", "3,5,7"], "needs 2 image(s) of each class 3,5,7")]:
        result = runner.invoke(main, [*args, *extra])
        assert result.exit_code != 0 and result.output.count("\n") == 1, result.output
        assert says is None or says in result.output
    result = runner.invoke(main, ["condense", "--dataset", "digits", "--method", "random", "--init-set", str(start)])
    assert result.exit_code == 2 and "random has none" in result.output
    result = runner.invoke(main, [*args[:5], *args[7:], "--ipc", "2"])  # no --classes: all ten are condensed
    assert result.exit_code == 2 and "holds classes 3,5; condensing all 10 classes" in result.output
    result = runner.invoke(main, [*args[:-1], str(tmp_path / "none.pt"), "--ipc", "2"])
    assert result.exit_code == 2 and "file not found" in result.output
