"""The condensing memory: valid pixels, sets matched at every size the schedule cuts them
to, and a recorded per-class choice between condensed images and their real start."""
import json

import pytest
import torch

from ccl.memory.fillers import keep_if_better
from ccl.models.convnet import ConvNet
from ccl.experiment import make_config, prepare
from ccl.runner import run

TINY_DATADAM = {"iterations": 3, "width": 8, "progress_every": 1, "init": "herding", "nested": True,
                "guide_weight": 1.0, "holdout": 0.25}


def test_keep_if_better_keeps_only_the_sets_that_represent_held_out_images():
    torch.manual_seed(0)
    learner = ConvNet(num_classes=2, channels=1, image_size=8, width=8, depth=2)
    held = torch.randn(40, 1, 8, 8)
    held_labels = torch.tensor([0] * 20 + [1] * 20)
    labels = torch.tensor([0] * 4 + [1] * 4)
    start = torch.randn(8, 1, 8, 8)                  # both classes start from typical images
    condensed = start.clone()
    condensed[:4] = 5.0 + torch.randn(4, 1, 8, 8)    # class 0's condensation went astray
    condensed[4:] = held[20:24]                      # class 1's now holds held-out-like images
    chosen, kept, ratio = keep_if_better(condensed, start, labels, (held, held_labels), learner, {0: [2], 1: [2]})
    assert kept == {"0": "real", "1": "condensed"} and ratio["0"] > 1 > ratio["1"]
    assert torch.equal(chosen[:4], start[:4]) and torch.equal(chosen[4:], condensed[4:])


def test_condensed_memory_is_valid_pixels_and_records_its_choices(tmp_path, tiny_run):
    p = prepare(make_config(**tiny_run, memory="datadam", memory_settings=TINY_DATADAM))
    run_dir = run(p, tmp_path, progress=False)
    memory = torch.load(run_dir / "memory.pt", weights_only=True)
    mean, std = torch.tensor(memory["mean"]).view(1, -1, 1, 1), torch.tensor(memory["std"]).view(1, -1, 1, 1)
    pixels = memory["images"] * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    updates = json.loads((run_dir / "results.json").read_text())["memory_updates"]
    for u in updates:  # one decision per new class, and why
        assert sorted(u["kept"]) == sorted(str(c) for c in u["new_classes"])
        assert set(u["kept"].values()) <= {"condensed", "real"} and set(u["heldout_ratio"]) == set(u["kept"])
    # the first experience's classes were matched at every share they are later cut to
    # (20 images, two new classes a time: 10, then 5, 4 (the remainder goes to the oldest), 3, 2);
    # the preset's lasting_only condenses the 5 the next cut keeps and leaves the other 5 real
    assert updates[0]["condensed_sizes"] == {str(c): 5 for c in updates[0]["new_classes"]}
    assert updates[0]["matched_sizes"] == {str(c): [5, 4, 3, 2] for c in updates[0]["new_classes"]}


def test_pad_on_the_learner_matches_its_recorded_trajectory(tmp_path, tiny_run, monkeypatch):
    """`expert = "learner"`: the memory records the learner's parameters at the start of
    every experience and after each epoch, on the device, hands them to PAD, and frees them."""
    from ccl.condense import pad
    from ccl.memory.plugin import DeviceMemoryPlugin
    seen = []
    real_match = pad.match_learner

    def recording(*args, **kwargs):
        trajectory = args[5]
        seen.append((len(trajectory.snapshots), {t.device.type for t in trajectory.snapshots},
                     trajectory.epoch_step))
        return real_match(*args, **kwargs)

    monkeypatch.setattr(pad, "match_learner", recording)
    settings = {"expert": "learner", "iterations": 2, "syn_steps": 2, "expert_epochs": 1, "batch_syn": 8,
                "progress_every": 1, "init": "herding", "holdout": 0.25}
    p = prepare(make_config(**{**tiny_run, "epochs": 2}, memory="pad", memory_settings=settings))
    plugins = []
    original = DeviceMemoryPlugin.update

    def update(self, *args):
        plugins.append(self)
        return original(self, *args)

    monkeypatch.setattr(DeviceMemoryPlugin, "update", update)
    run_dir = run(p, tmp_path, progress=False)
    # two epochs: the start and two epoch ends; on the training device; SGD's reach per epoch
    assert [s[:2] for s in seen] == [(3, {p.device.type})] * 5
    steps = -(-(2 * 20) // 16)  # minibatches an epoch: two new classes of 20 images, batch 16
    assert seen[0][2] == pytest.approx(0.01 * steps / 0.1)
    assert plugins and plugins[-1].recorder.snapshots == []  # freed after the update
    updates = json.loads((run_dir / "results.json").read_text())["memory_updates"]
    for u in updates:
        assert u["expert"] == "learner" and u["experts_s"] == 0.0
        assert sorted(u["kept"]) == sorted(str(c) for c in u["new_classes"])


def test_one_learner_matching_step_moves_images_towards_the_later_snapshot():
    """A linear learner and two snapshots: one PAD step on the images lowers the
    normalised distance between where training on them lands and the later snapshot."""
    from ccl.condense import pad
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    real = torch.randn(30, 1, 4, 4)
    labels = torch.arange(3).repeat_interleave(10)
    start = pad.flat_parameters(net)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(5):  # the "learner" trains on the real images
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(real), labels).backward()
        optimiser.step()
    trajectory = pad.LearnerTrajectory([start, pad.flat_parameters(net)], net, epoch_step=2.5)
    settings = pad.PADSettings(expert="learner", iterations=1, syn_steps=2, expert_epochs=1, max_start_epoch=0,
                               lr_img=1.0, lr_lr=0.0, dsa=False, alpha=0.0, progress_every=1)
    syn_labels = torch.tensor([0, 1, 2])
    from ccl.condense.bounds import channel_range, project_
    images = project_(torch.randn(3, 1, 4, 4), channel_range(real))  # PAD keeps images in the pixel range

    def distance(x):
        student = pad.FunctionalStudent(net)
        plan = pad.student_plan(3, 3, settings.syn_steps, None, "cpu")  # the whole set: no draw
        end = pad.unroll_student(student, start, x, syn_labels, torch.tensor(trajectory.student_lr(settings)),
                                 plan)
        return float(pad.trajectory_matching_loss(end, start, trajectory.snapshots[1]))

    stats = {}
    moved, moved_labels = pad.condense(real, labels, {0: 1, 1: 1, 2: 1}, "cpu", settings,
                                       init=(images, syn_labels), progress=False, stats=stats,
                                       trajectory=trajectory)
    assert torch.equal(moved_labels, syn_labels) and not torch.equal(moved, images)
    assert distance(moved) < distance(images)
    assert stats["expert"] == "learner" and stats["lr_init"] == pytest.approx(2.5 / 2)


def test_pad_on_the_learner_needs_a_trajectory():
    from ccl.condense import pad
    real, labels = torch.randn(8, 1, 4, 4), torch.tensor([0] * 4 + [1] * 4)
    with pytest.raises(ValueError, match="trajectory"):
        pad.condense(real, labels, {0: 1, 1: 1}, "cpu", pad.PADSettings(expert="learner"))


def test_pad_on_the_learner_refuses_a_memory_filled_before_training(tiny_run):
    from ccl.errors import CclError
    with pytest.raises(CclError, match="fills the memory before the learner trains"):
        prepare(make_config(**tiny_run, strategy="gdumb", memory="pad", memory_settings={"expert": "learner"}))


def test_lasting_only_condenses_what_the_next_cut_keeps_and_keeps_the_rest_real():
    from ccl.condense import datadam
    from ccl.memory.fillers import CondenseFiller, FillerSettings, herding_exemplars
    torch.manual_seed(0)
    learner = ConvNet(num_classes=2, channels=1, image_size=8, width=8, depth=2)
    real, labels = torch.rand(40, 1, 8, 8), torch.arange(2).repeat_interleave(20)
    settings = datadam.DataDAMSettings(**{**{k: v for k, v in TINY_DATADAM.items() if k != "holdout"},
                                          "lr_images": 10.0})
    filler = CondenseFiller(torch.device("cpu"), settings, datadam.condense, progress=False,
                            filler_settings=FillerSettings(lasting_only=True))
    budget, later = {0: 4, 1: 4}, {0: [2, 1], 1: [2, 1]}
    images, image_labels = filler.fill(real, labels, budget, learner, later=later)
    start, _ = herding_exemplars(real, labels, budget, learner)
    assert filler.stats["condensed_sizes"] == {"0": 2, "1": 2}
    assert torch.equal(image_labels, torch.tensor([0] * 4 + [1] * 4))
    for c in range(2):  # per class: two condensed images, then herding's next two, untouched
        assert not torch.equal(images[4 * c:4 * c + 2], start[4 * c:4 * c + 2])
        assert torch.equal(images[4 * c + 2:4 * c + 4], start[4 * c + 2:4 * c + 4])


@pytest.mark.parametrize("memory", ["pad", "mtt"])
def test_a_class_with_fewer_images_than_slots_fills_what_it_has(tmp_path, tiny_run, memory):
    """16 training images a class and 40 slots: the first experience's two classes have 20
    slots each. The condenser starts from herding's exemplars, of which there are 16 (mtt's
    preset holds a fifth out first: 13 left); it condenses those, as the herding memory
    keeps its 16, instead of refusing that the start does not fill the slots."""
    from ccl.runner import _build
    settings = {"iterations": 2, "expert_epochs": 1, "num_experts": 1}
    p = prepare(make_config(**{**tiny_run, "train_per_class": 16, "mem_size": 40}, memory=memory,
                            memory_settings=settings))
    bench, strategy, parts = _build(p, tmp_path, progress=False)
    strategy.train(bench.train_stream[0])
    memory_plugin = parts.memory
    first = p.experience_classes[0]
    assert memory_plugin.update_log[0]["slots"] == {str(c): 20 for c in first}
    held_out = round(0.2 * 16) if memory == "mtt" else 0  # mtt's preset: holdout = 0.2
    assert torch.bincount(memory_plugin.labels, minlength=10)[first].tolist() == [16 - held_out] * 2
    assert torch.isfinite(memory_plugin.codec.decode(memory_plugin.images)).all()


def test_a_presets_filler_keys_go_to_the_filler_and_the_rest_to_the_method():
    """One preset and one `--set` write both; `split_settings` parts them, and a key of
    another memory's filler is as unknown as any typo."""
    from ccl.errors import CclError
    from ccl.memory import split_settings
    from ccl.memory.fillers import FillerSettings
    settings, filler = split_settings("mtt", None, {})  # configs/mtt.toml extends pad.toml: holdout = 0.2
    assert filler == FillerSettings(holdout=0.2) and not hasattr(settings, "holdout") and settings.alpha == 0.0
    settings, filler = split_settings("datadam", None, {"holdout": 0.1, "iterations": 3})
    assert filler == FillerSettings(holdout=0.1, lasting_only=True) and settings.iterations == 3
    with pytest.raises(CclError, match="unknown key 'memory_context'"):
        split_settings("datadam", None, {"memory_context": True})  # PAD's filler takes the old classes, DataDAM's not
    with pytest.raises(CclError, match=r"holdout must be in \[0, 1\)"):
        split_settings("pad", None, {"holdout": 1.0})
