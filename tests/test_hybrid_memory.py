"""The hybrid memory: per class a share of condensed images and real exemplars herded
given them, interleaved so that every cut keeps the share, each row with a soft target."""
import json

import pytest
import torch
from click.testing import CliRunner

from ccl.cli import main
from ccl.condense import datadam
from ccl.experiment import make_config, prepare
from ccl.memory import MEMORIES, DeviceMemoryPlugin, settings_for_memory
from ccl.memory.fillers import CondenseFiller
from ccl.memory.slots import future_shares
from ccl.memory.hybrid import HybridFiller, HybridSettings, synthetic_count, synthetic_layout
from ccl.models.convnet import ConvNet

TINY = dict(iterations=2, width=8, progress_every=1, init="herding", nested=True, guide_weight=1.0,
            lr_images=10.0)


@pytest.mark.parametrize("share", [0.25, 0.5, 1.0])
def test_every_prefix_holds_the_share_and_at_least_one_synthetic_row(share):
    layouts = [synthetic_layout(k, share) for k in range(1, 25)]
    for k, layout in enumerate(layouts, start=1):
        assert int(layout.sum()) == synthetic_count(k, share) == max(1, int(share * k + 0.5))
        assert torch.equal(layout, layouts[-1][:k])  # one order serves every size: a cut keeps a prefix
    assert bool(layouts[0][0])  # the one row a class may be cut to is condensed


@pytest.mark.parametrize("share", [0.25, 0.5])
def test_a_five_experience_stream_keeps_the_split_after_every_cut_within_budget(share):
    """Synthetic rows are told from real ones by being no real image of their class (the
    condensation moved them; float32 storage keeps real rows exact)."""
    torch.manual_seed(0)
    real, labels = torch.rand(160, 1, 8, 8), torch.arange(10).repeat_interleave(16)
    learner = ConvNet(num_classes=10, channels=1, image_size=8, width=8, depth=2)
    schedule = [[2 * i, 2 * i + 1] for i in range(5)]

    def real_images(classes):
        mask = torch.isin(labels, torch.tensor(classes))
        return real[mask], labels[mask]

    filler = HybridFiller(torch.device("cpu"), HybridSettings(**TINY, synthetic_share=share), datadam.condense,
                          progress=False)
    memory = DeviceMemoryPlugin(20, 4, filler, real_images, torch.device("cpu"), schedule=schedule)
    for group in schedule:
        memory.update(group, learner)
        assert len(memory.labels) <= 20 and len(memory.soft) == len(memory.labels)
        assert torch.isfinite(memory.soft).all()
        for c in memory.classes:
            rows = memory.images[memory.labels == c]  # (k, 1, 8, 8) in priority order
            own = real[labels == c].flatten(1)
            is_real = (rows.flatten(1)[:, None] == own[None]).all(2).any(1)  # (k,)
            assert torch.equal(~is_real, synthetic_layout(len(rows), share)), (c, len(rows))
            assert len({tuple(r.tolist()) for r in rows[is_real].flatten(1)}) == int(is_real.sum())  # no repeats
        # the new classes' condensed rows were matched at the synthetic counts the later cuts keep
        later = future_shares(20, memory.classes, schedule[len(memory.classes) // 2:])
        for c in group:
            n = synthetic_count(memory.update_log[-1]["slots"][str(c)], share)
            cuts = {synthetic_count(s, share) for s in later[c]} - {n}
            assert memory.update_log[-1]["matched_sizes"][str(c)] == sorted({n, *cuts}, reverse=True)


def test_soft_targets_are_the_learners_logits_and_can_be_off():
    torch.manual_seed(0)
    real, labels = torch.rand(40, 1, 8, 8), torch.arange(2).repeat_interleave(20)
    learner = ConvNet(num_classes=2, channels=1, image_size=8, width=8, depth=2)
    filled = HybridFiller(torch.device("cpu"), HybridSettings(**TINY), datadam.condense,
                          progress=False).fill(real, labels, {0: 4, 1: 4}, learner, later={0: [2], 1: [2]})
    learner.eval()
    assert torch.allclose(filled.soft_labels, learner(filled[0]), atol=1e-5)
    hard = HybridFiller(torch.device("cpu"), HybridSettings(**TINY, soft_labels=False), datadam.condense,
                        progress=False).fill(real, labels, {0: 4, 1: 4}, learner)
    assert getattr(hard, "soft_labels", None) is None and hard[0].shape == (8, 1, 8, 8)


def test_only_the_synthetic_share_is_priced_as_condensation():
    settings = settings_for_memory("hybrid", None, {})
    datadam_filler = CondenseFiller("cpu", settings_for_memory("datadam", None, {"lasting_only": False}),
                                    datadam.condense)
    args = (2, 200, 1000.0, 64)  # two new classes, 200 slots, 1,000 real images a class, width 64
    work = {share: HybridFiller("cpu", HybridSettings(**{**settings.__dict__, "synthetic_share": share}),
                                datadam.condense).work(*args) for share in (0.25, 0.5, 1.0)}
    assert work[0.25] < work[0.5] < work[1.0]
    assert work[0.25] < datadam_filler.work(*args)
    synthetic = settings.work(2, 50, 1000.0, 64) - settings.work(2, 0, 1000.0, 64)  # 25 of 100 a class
    assert work[0.5] - work[0.25] == pytest.approx(synthetic)


def test_a_run_with_the_hybrid_memory_stores_finite_soft_targets(tmp_path):
    runs = tmp_path / "runs"
    result = CliRunner().invoke(main, ["run", "--scenario", "split-digits", "--memory", "hybrid", "--epochs", "1",
                                       "--train-per-class", "20", "--mem-size", "20", "--width", "16",
                                       "--set", "width=8", "--quiet", "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    (run_dir,) = runs.iterdir()
    saved = torch.load(run_dir / "memory.pt", weights_only=True)
    assert len(saved["labels"]) == 20 and torch.isfinite(saved["soft_targets"]).all()
    updates = json.loads((run_dir / "results.json").read_text())["memory_updates"]
    assert updates[0]["synthetic_sizes"] == {str(c): 3 for c in updates[0]["new_classes"]}  # 3 of 10
    config = json.loads((run_dir / "config.json").read_text())
    assert config["memory_settings"]["synthetic_share"] == 0.25 and config["memory_settings"]["soft_labels"]


@pytest.mark.parametrize("value", ["0", "1.5", "nan", "-0.25"])
def test_a_bad_synthetic_share_is_one_line(tmp_path, value):
    result = CliRunner().invoke(main, ["run", "--memory", "hybrid", "--set", f"synthetic_share={value}",
                                       "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: ") and "synthetic_share must be in (0, 1]" in result.output


def test_lasting_only_is_refused_and_the_spec_is_registered():
    with pytest.raises(ValueError, match="lasting_only"):
        HybridSettings(lasting_only=True)
    spec = MEMORIES.get("hybrid").value
    assert spec.settings is HybridSettings and isinstance(spec.make_filler("cpu", HybridSettings()), HybridFiller)
    assert prepare(make_config(scenario="split-digits", memory="hybrid", memory_settings={"synthetic_share": 0.5})
                   ).settings.synthetic_share == 0.5
    from ccl.replay import CondensedReplay  # the Python API resolves the same settings
    assert CondensedReplay(20, "hybrid", {"synthetic_share": 0.5}).settings == \
        settings_for_memory("hybrid", None, {"synthetic_share": 0.5})
    assert CondensedReplay(20, "hybrid", HybridSettings(width=8)).settings.width == 8
