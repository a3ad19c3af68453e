"""GDumb trains its fresh learner as the paper's code does (drimpossible/GDumb): its own
epochs, minibatch size and optimiser, a warm start then SGDR, clipped gradients; it fits
its memory, says how well (`memory_fit_accuracy`), and its settings are recorded and
checked before anything trains."""
import json

import pytest
import torch
from avalanche.core import SupervisedPlugin
from click.testing import CliRunner

from ccl.cli import main
from ccl.estimate import plan_run
from ccl.experiment import make_config, prepare
from ccl.runner import _build, run
from ccl.strategies.gdumb import GDumbSettings, scheduled_lr
from ccl.training import seed_everything


def test_the_lr_is_gdumbs_warm_start_and_sgdr_at_every_epoch():
    """GDumb's src/main.py, epoch by epoch: a first epoch at maxlr / 10, the second at
    maxlr, then torch's CosineAnnealingWarmRestarts(T_0=1, T_mult=2) stepped once an epoch."""
    settings = GDumbSettings(epochs=64)
    optimiser = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=settings.lr)
    sgdr = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimiser, T_0=1, T_mult=2, eta_min=settings.min_lr)
    for epoch in range(64):
        if epoch == 0:
            expected = settings.lr * 0.1
        elif epoch == 1:
            expected = settings.lr
        else:
            sgdr.step()
            expected = optimiser.param_groups[0]["lr"]
        assert scheduled_lr(settings, epoch * 7, 7) == pytest.approx(expected, rel=1e-9), epoch


def test_the_lr_moves_every_minibatch_down_each_period_and_by_each_schedule():
    s = GDumbSettings(epochs=8)
    lrs = [scheduled_lr(s, step, 4) for step in range(32)]  # 4 minibatches an epoch
    assert lrs[:4] == [s.lr * 0.1] * 4  # the warm start
    for start, end in ((4, 8), (8, 16), (16, 32)):  # periods of 1, 2 and 4 epochs from epoch 1
        assert lrs[start] == s.lr and all(a > b for a, b in zip(lrs[start:end], lrs[start + 1:end]))
    assert lrs[12] == pytest.approx((s.lr + s.min_lr) / 2)  # half-way through the period of epochs 2-4
    assert s.min_lr < lrs[31] < 0.02 * s.lr  # the last minibatch of 8 epochs ends a period: near min_lr
    cosine = GDumbSettings(epochs=5, schedule="cosine", warmup_epochs=0, min_lr=0.0)
    assert [scheduled_lr(cosine, k, 10) for k in (0, 25, 50)] == pytest.approx([0.05, 0.025, 0.0])
    constant = GDumbSettings(epochs=4, schedule="constant", lr=0.1)
    assert [scheduled_lr(constant, k, 3) for k in range(0, 12, 3)] == pytest.approx([0.01, 0.1, 0.1, 0.1])


def test_gdumbs_own_epochs_minibatches_and_optimiser_train_the_fresh_learner(tmp_path, tiny_run):
    settings = {"epochs": 3, "batch_size": 8, "lr": 0.02, "min_lr": 0.001, "clip": 0.05, "momentum": 0.5,
                "weight_decay": 0.01}
    p = prepare(make_config(**{**tiny_run, "epochs": 1, "batch_size": 16}, memory="random", strategy="gdumb",
                            mem_augment="none", strategy_settings=settings))
    seed_everything(0)
    bench, strategy, parts = _build(p, tmp_path, progress=False)
    memory = parts.memory
    seen = []

    class Spy(SupervisedPlugin):
        def before_update(self, s, **kw):  # after GDumb's plugin has clipped the gradients
            norm = torch.linalg.vector_norm(torch.stack([q.grad.norm() for q in s.model.parameters()]))
            group = s.optimizer.param_groups[0]
            seen.append((len(s.mb_y), s.clock.train_exp_epochs, norm.item(), group["lr"], group["momentum"],
                         group["weight_decay"]))

    strategy.plugins.insert(-1, Spy())  # Avalanche's clock stays last
    strategy.train(bench.train_stream[0])
    # 20 memory images in minibatches of 8 for 3 epochs (the run's: one epoch of 16)
    assert [(n, epoch) for n, epoch, *_ in seen] == [(8, 0), (8, 0), (4, 0), (8, 1), (8, 1), (4, 1),
                                                     (8, 2), (8, 2), (4, 2)]
    norms = [norm for _, _, norm, *_ in seen]
    assert max(norms) <= 0.05 * (1 + 1e-5) and max(norms) > 0.049  # clipped, and the clip was binding
    assert [lr for *_, lr, _, _ in seen] == pytest.approx([scheduled_lr(p.strategy_settings, k, 3) for k in range(9)])
    assert {(m, wd) for *_, m, wd in seen} == {(0.5, 0.01)}
    assert (strategy.train_epochs, strategy.train_mb_size) == (1, 16)  # the run's again after the experience
    plan = plan_run(p, bench, memory)  # the estimate counts GDumb's work: epochs x memory minibatches
    assert plan.steps == (9,) * 5 and plan.stream_batch == 8 and plan.replayed == (0,) * 5


def test_the_fresh_learner_fits_its_memory_and_says_so(tmp_path, tiny_run):
    """At GDumb's defaults (DSA on the memory's images, as a run's default): every
    experience's learner ends near 1 on its memory, as trained and as stored."""
    run_dir = run(prepare(make_config(**tiny_run, memory="herding", strategy="gdumb")), tmp_path, progress=False)
    r = json.loads((run_dir / "results.json").read_text())
    assert len(r["memory_fit_accuracy"]) == 5 and min(r["memory_fit_accuracy"]) >= 0.9, r["memory_fit_accuracy"]
    assert min(r["memory_accuracy"]) >= 0.95, r["memory_accuracy"]
    last_epochs = [row.split(",") for row in (run_dir / "logs" / "training_results.csv").read_text().splitlines()
                   if row.split(",")[1] == str(GDumbSettings().epochs - 1)]
    assert [float(row[2]) for row in last_epochs] == pytest.approx(r["memory_fit_accuracy"], abs=1e-4)
    er = run(prepare(make_config(**tiny_run, memory="herding")), tmp_path / "er", progress=False)
    assert json.loads((er / "results.json").read_text())["memory_fit_accuracy"] == [None] * 5  # no fresh learner


def test_gdumbs_settings_from_the_command_line_and_a_preset_table_land_in_config_json(tmp_path, tiny_run):
    preset = tmp_path / "preset.toml"
    preset.write_text('scenario = "split-digits"\nlr = 0.2\n[strategies.gdumb]\nepochs = 2\nlr = 0.02\n'
                      'batch_size = 8\n')
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in tiny_run.items() if k != "scenario"]
    result = CliRunner().invoke(main, ["run", "--config", str(preset), "--strategy", "gdumb", "--lr", "0.3",
                                       "--strategy-set", "schedule=cosine", "--strategy-set", "lr=0.03", *flags,
                                       "--quiet", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    # --lr is the run's (no note: it replaces no value of GDumb's); --strategy-set lr is GDumb's
    assert "note: --strategy-set lr=0.03 overrides the preset's lr 0.02 for gdumb\n" in result.output
    assert "--lr 0.3 overrides" not in result.output
    assert "note: --epochs, --lr, --batch-size do not train the fresh learner of gdumb, which has its own" \
        in result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run"]["lr"] == 0.3
    assert config["strategy_settings"] == {**vars(GDumbSettings()), "epochs": 2, "lr": 0.03, "batch_size": 8,
                                           "schedule": "cosine"}
    logged = (run_dir / "logs" / "training_results.csv").read_text().splitlines()[1:]
    assert [row.split(",")[:2] for row in logged[:3]] == [["0", "0"], ["0", "1"], ["1", "0"]]  # 2 epochs each


@pytest.mark.parametrize("setting, message", [
    ("epochs=0", "epochs must be at least 1, got 0"),
    ("lr=0", "lr must be in (0, 10.0], got 0.0"),
    ("lr=-0.1", "lr must be in (0, 10.0], got -0.1"),
    ("lr=nan", "gdumb.lr: expected a finite number, got nan"),  # every setting's NaN, refused as it is read
    ("min_lr=0.1", "min_lr must be in [0, lr = 0.05], got 0.1"),
    ("schedule=step", "unknown schedule 'step'; choose one of: sgdr, cosine, constant"),
    ("batch_size=0", "batch_size must be at least 1, got 0"),
    ("clip=-1", "clip must be a gradient norm >= 0 (0: off), got -1.0"),
    ("restart_epochs=0", "restart_epochs must be a number of epochs > 0, got 0.0"),
    ("warmup_epochs=128", "warmup_epochs must be in 0..epochs - 1 = 127, got 128"),
    ("momentum=1", "momentum must be in [0, 1), got 1.0"),
    ("epochs=2.5", "expected an integer, got 2.5"),
])
def test_bad_gdumb_settings_are_one_line_before_anything_runs(tmp_path, setting, message):
    result = CliRunner().invoke(main, ["run", "--strategy", "gdumb", "--strategy-set", setting,
                                       "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: strategy gdumb") and message in result.output, result.output
    assert not (tmp_path / "runs").exists()
