"""End-to-end runs on tiny split-digits streams: schema, memory, determinism."""
import json

import pytest
import torch
from avalanche.core import SupervisedPlugin

from ccl.errors import CclError
from ccl.experiment import make_config, prepare
from ccl.runner import _build, resume_run, run
from ccl.training import seed_everything


def test_run_folder_and_results_schema(tmp_path, tiny_run):
    run_dir = run(prepare(make_config(**tiny_run, memory="random")), tmp_path, progress=False)
    assert run_dir.parent == tmp_path and run_dir.name.endswith("-split-digits-random-s0")
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "results.json", "status.json", "memory.pt", "logs"}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["run"]["mem_size"] == 20 and config["run"]["depth"] == 2  # the scenario's default
    assert "torch" in config["versions"] and sorted(config["class_order"]) == list(range(10))
    r = json.loads((run_dir / "results.json").read_text())
    n = 5
    assert len(r["accuracy_matrix"]) == n and all(len(row) == n for row in r["accuracy_matrix"])
    for key in ("seen_accuracy", "average_accuracy", "forgetting", "bwt", "train_seconds", "memory_update_seconds"):
        assert len(r[key]) == n, key
    assert all(r["accuracy_matrix"][i][j] == 0 for i in range(n) for j in range(i + 1, n))  # unseen classes
    assert 0 <= r["final_average_accuracy"] <= 1 and -1 <= r["average_forgetting"] <= 1
    # Avalanche: forgetting averages first-minus-final accuracy, BWT final-minus-first
    assert r["final_bwt"] == pytest.approx(-r["average_forgetting"], abs=1e-6)
    assert r["memory_size"] == {"images": 20, "dtype": "float32", "bytes": 20 * 64 * 4,
                                "bytes_by_field": {"images": 20 * 64 * 4}}
    memory = torch.load(run_dir / "memory.pt")
    assert memory["images"].shape == (20, 1, 8, 8)
    assert torch.bincount(memory["labels"], minlength=10).tolist() == [2] * 10
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    assert not list(run_dir.glob(".*.tmp"))


def test_same_seed_same_numbers(tmp_path, tiny_run):
    results = []
    for i in range(2):
        run_dir = run(prepare(make_config(**tiny_run, memory="herding", seed=3)), tmp_path / str(i), progress=False)
        results.append(json.loads((run_dir / "results.json").read_text()))
    assert results[0]["accuracy_matrix"] == results[1]["accuracy_matrix"]
    assert results[0]["class_order"] == results[1]["class_order"]


def test_memory_samples_reach_the_loss(tmp_path, tiny_run):
    p = prepare(make_config(**tiny_run, memory="random"))
    seed_everything(0)
    bench, strategy, parts = _build(p, tmp_path, progress=False)
    memory = parts.memory
    seen = []

    class Spy(SupervisedPlugin):
        def before_backward(self, s, **kw):
            expected = torch.nn.functional.cross_entropy(s.mb_output, s.mb_y)
            seen.append((len(s.mb_y), set(s.mb_y.tolist()), float(s.loss), float(expected)))

    strategy.plugins.append(Spy())
    strategy.train(bench.train_stream[0])
    assert all(n <= tiny_run["batch_size"] for n, *_ in seen)  # empty memory: nothing appended
    seen.clear()
    strategy.train(bench.train_stream[1])
    old = set(p.experience_classes[0])
    assert all(n > tiny_run["mem_batch"] for n, *_ in seen)
    assert any(labels & old for _, labels, *_ in seen)  # old classes come only from memory
    assert all(loss == pytest.approx(expected, rel=1e-5) for *_, loss, expected in seen)
    assert memory.images.device == p.device


@pytest.mark.parametrize("augment", ["none", "dsa"])
def test_replayed_samples_are_augmented_only_when_asked(tmp_path, tiny_run, augment):
    p = prepare(make_config(**tiny_run, memory="random", mem_augment=augment))
    seed_everything(0)
    bench, strategy, parts = _build(p, tmp_path, progress=False)
    memory = parts.memory
    strategy.train(bench.train_stream[0])
    replayed = []

    class Spy(SupervisedPlugin):
        def before_forward(self, s, **kw):
            replayed.append((s.mbatch[0][-tiny_run["mem_batch"]:], s.mbatch[1][-tiny_run["mem_batch"]:]))

    strategy.plugins.append(Spy())  # after the memory plugin: sees the appended samples
    stored = memory.codec.decode(memory.images)  # the first experience's classes only
    strategy.train(bench.train_stream[1])
    images = torch.cat([x for x, _ in replayed])
    copies = (images[:, None] == stored[None]).flatten(2).all(2).any(1)  # an exact stored image?
    # DSA draws one family per minibatch; a no-flip draw of the flip family leaves an image as it is
    assert copies.all() if augment == "none" else copies.float().mean() < 0.3


@pytest.mark.parametrize("augment", ["none", "dsa"])
def test_gdumb_trains_on_the_memory_alone_augmented_when_asked(tmp_path, tiny_run, augment):
    p = prepare(make_config(**tiny_run, memory="random", protocol="gdumb", mem_augment=augment,
                            strategy_settings={"epochs": 2}))
    seed_everything(0)
    bench, strategy, parts = _build(p, tmp_path, progress=False)
    memory = parts.memory
    seen = []

    class Spy(SupervisedPlugin):
        def before_forward(self, s, **kw):
            seen.append(s.mbatch[0])

    strategy.plugins.append(Spy())  # after GDumb's plugin: sees what the learner trains on
    strategy.train(bench.train_stream[0])
    images, stored = torch.cat(seen), memory.codec.decode(memory.images)
    assert len(images) == 2 * len(stored)  # the memory alone, each image once an epoch (GDumb's epochs)
    copies = (images[:, None] == stored[None]).flatten(2).all(2).any(1)  # an exact stored image?
    assert copies.all() if augment == "none" else copies.float().mean() < 0.3


def test_memory_stays_within_budget_and_balanced(tmp_path, tiny_run):
    p = prepare(make_config(**{**tiny_run, "mem_size": 23}, memory="herding"))
    seed_everything(0)
    bench, strategy, parts = _build(p, tmp_path, progress=False)
    memory = parts.memory
    for i, exp in enumerate(bench.train_stream):
        strategy.train(exp)
        counts = torch.bincount(memory.labels, minlength=10)
        seen = [c for g in p.experience_classes[:i + 1] for c in g]
        assert counts.sum() == 23 and counts[seen].max() - counts[seen].min() <= 1


@pytest.mark.parametrize("memory", ["none", "avalanche-reservoir", "reservoir", "joint"])
def test_other_memories_run(tmp_path, tiny_run, memory):
    run_dir = run(prepare(make_config(**tiny_run, memory=memory)), tmp_path, progress=False)
    r = json.loads((run_dir / "results.json").read_text())
    assert len(r["accuracy_matrix"]) == (1 if memory == "joint" else 5)
    assert r["memory_size"]["images"] == (20 if "reservoir" in memory else 0)


def test_uint8_memory_round_trips(tmp_path, tiny_run):
    run_dir = run(prepare(make_config(**tiny_run, memory="random", mem_dtype="uint8")), tmp_path, progress=False)
    r = json.loads((run_dir / "results.json").read_text())
    assert r["memory_size"] == {"images": 20, "dtype": "uint8", "bytes": 20 * 64, "bytes_by_field": {"images": 20 * 64}}


@pytest.mark.parametrize("memory, strategy, field", [("herding-soft", "er", "soft_targets"),
                                                     ("random", "der++", "logits")])
def test_memory_bytes_count_soft_targets_and_logits(tmp_path, tiny_run, memory, strategy, field):
    """A row's soft targets or DER logits (10 float32 class scores here) are memory too: the
    bytes compared against other memories include them."""
    run_dir = run(prepare(make_config(**tiny_run, memory=memory, strategy=strategy, mem_dtype="uint8")), tmp_path,
                  progress=False)
    r = json.loads((run_dir / "results.json").read_text())
    assert r["memory_size"] == {"images": 20, "dtype": "uint8", "bytes": 20 * 64 + 20 * 10 * 4,
                                "bytes_by_field": {"images": 20 * 64, field: 20 * 10 * 4}}
    memory_file = torch.load(run_dir / "memory.pt")
    assert memory_file[field].shape == (20, 10)


# batch_syn 32 >= any experience's budget here: every synthetic image is in every student
# step, so none can stay an untouched copy of its real initialisation.
TINY_METHOD = {
    "dm": {"iterations": 3, "width": 16, "real_batch": 8, "progress_every": 1},
    "datadam": {"iterations": 3, "width": 16, "real_batch": 8, "progress_every": 1},
    # holdout 0: here the matched images themselves must fill the slots (the presets' fallback
    # to real images is tested in test_condensed_memory.py)
    "mtt": {"iterations": 2, "width": 8, "syn_steps": 2, "batch_syn": 32, "num_experts": 1,
            "expert_train_epochs": 3, "max_start_epoch": 1, "expert_epochs": 1, "progress_every": 1, "holdout": 0.0},
    "pad": {"iterations": 2, "width": 8, "syn_steps": 2, "batch_syn": 32, "num_experts": 1,
            "expert_train_epochs": 3, "max_start_epoch": 1, "expert_epochs": 1, "score_epochs": 1,
            "progress_every": 1, "holdout": 0.0},
}


@pytest.mark.parametrize("memory", list(TINY_METHOD))
def test_condensing_memories_fill_their_slots(tmp_path, tiny_run, memory):
    p = prepare(make_config(**tiny_run, memory=memory, memory_settings=TINY_METHOD[memory]))
    run_dir = run(p, tmp_path, progress=False)
    r = json.loads((run_dir / "results.json").read_text())
    memory_state = torch.load(run_dir / "memory.pt")
    assert torch.bincount(memory_state["labels"], minlength=10).tolist() == [2] * 10
    assert torch.isfinite(memory_state["images"]).all()
    assert all(u["iterations"] >= 1 for u in r["memory_updates"])  # the method's own stats are kept
    real = p.data.normalise(p.data.train_x)
    # synthetic: no memory image is an exact copy of a real one any more
    assert not any((real == img).flatten(1).all(1).any() for img in memory_state["images"][:4])


def test_pad_with_memory_context_condenses_against_the_old_classes(tmp_path, tiny_run):
    settings = {**TINY_METHOD["pad"], "memory_context": True}
    p = prepare(make_config(**tiny_run, memory="pad", memory_settings=settings))
    run_dir = run(p, tmp_path, progress=False)
    updates = json.loads((run_dir / "results.json").read_text())["memory_updates"]
    # the context is what the memory keeps of the old classes once their slots shrink
    old_slots = [sum(n for c, n in u["slots"].items() if int(c) not in u["new_classes"]) for u in updates]
    assert [u["context_images"] for u in updates] == old_slots == [0, 10, 14, 16, 16]
    assert json.loads((run_dir / "config.json").read_text())["memory_settings"]["memory_context"] is True


def test_gdumb_protocol_trains_on_the_memory_alone(tmp_path, tiny_run):
    p = prepare(make_config(**tiny_run, memory="random", protocol="gdumb", strategy_settings={"epochs": 32}))
    seed_everything(0)
    bench, strategy, parts = _build(p, tmp_path, progress=False)
    memory = parts.memory
    assert memory not in strategy.plugins  # nothing is appended to minibatches
    run_dir = run(p, tmp_path, progress=False)
    r = json.loads((run_dir / "results.json").read_text())
    rows = r["accuracy_matrix"]
    assert len(rows) == 5 and all(rows[i][j] == 0 for i in range(5) for j in range(i + 1, 5))
    assert r["seen_accuracy"][-1] > 0.2  # ten classes learnt from 20 memory images alone


def test_gdumb_needs_a_device_memory(tiny_run):
    from ccl.errors import CclError
    with pytest.raises(CclError, match="gdumb"):
        prepare(make_config(**tiny_run, memory="avalanche-reservoir", protocol="gdumb"))


def test_tensorboard_logger_writes_events(tmp_path, tiny_run):
    pytest.importorskip("tensorboard")
    run(prepare(make_config(**tiny_run, tensorboard=str(tmp_path / "tb"))), tmp_path / "runs", progress=False)
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_missing_wandb_is_a_clear_error(tmp_path, tiny_run, monkeypatch):
    import sys
    from ccl.errors import CclError
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the package were not installed
    with pytest.raises(CclError, match="pip install wandb"):
        prepare(make_config(**tiny_run, wandb="proj"))


def test_finetuning_on_the_memory_lifts_old_classes(tmp_path, tiny_run):
    accuracy = {}
    for epochs in (0, 10):
        cfg = make_config(**tiny_run, memory="random", finetune_epochs=epochs)
        run_dir = run(prepare(cfg), tmp_path / str(epochs), progress=False)
        r = json.loads((run_dir / "results.json").read_text())
        accuracy[epochs] = sum(r["accuracy_matrix"][-1][:-1]) / 4  # the four earlier experiences
        assert json.loads((run_dir / "config.json").read_text())["run"]["finetune_epochs"] == epochs
    assert accuracy[10] > accuracy[0] + 0.1


@pytest.mark.parametrize("settings", [dict(memory="avalanche-reservoir"), dict(memory="random", protocol="gdumb")])
def test_finetuning_needs_replay_from_a_device_memory(tiny_run, settings):
    from ccl.errors import CclError
    with pytest.raises(CclError, match="finetune-epochs"):
        prepare(make_config(**tiny_run, **settings, finetune_epochs=5))


def test_memory_augmentation_defaults_to_dsa_on_the_device_and_is_recorded():
    from ccl.experiment import make_config
    assert make_config(memory="random").mem_augment == "dsa"
    assert make_config(memory="datadam").mem_augment == "dsa"
    assert make_config(memory="avalanche-reservoir").mem_augment == "none"  # Avalanche's own buffer: no hook for it
    assert make_config(memory="reservoir").mem_augment == "dsa"
    assert make_config(memory="random", mem_augment="none").mem_augment == "none"


def test_a_variant_keeps_its_defining_settings_whatever_the_preset():
    from ccl.memory import MEMORIES
    from ccl.experiment import memory_settings
    dm, _ = memory_settings(MEMORIES.get("dm").value, make_config(memory="dm", memory_config="datadam-paper"))
    assert dm.sam_weight == 0.0  # the preset's attention weight (1.0) does not make dm DataDAM
    mtt, _ = memory_settings(MEMORIES.get("mtt").value, make_config(memory="mtt", memory_config="pad-paper"))
    assert mtt.scheduler is False and mtt.alpha == 0.0
    with pytest.raises(CclError, match="dm is defined by sam_weight = 0.0"):
        memory_settings(MEMORIES.get("dm").value, make_config(memory="dm", memory_settings={"sam_weight": 1.0}))


def test_a_resumed_run_uses_the_settings_it_recorded_not_the_preset_file(tmp_path, tiny_run, interrupted_run):
    preset = tmp_path / "mine.toml"
    preset.write_text("iterations = 2\nwidth = 8\nprogress_every = 1\n")

    run_dir = interrupted_run(prepare(make_config(**tiny_run, memory="datadam", memory_config=str(preset))),
                              tmp_path / "runs", after=1)
    preset.write_text("iterations = -5\n")  # edited (here: broken) after the run started
    _, resumed = resume_run(run_dir, progress=False)
    assert resumed and json.loads((run_dir / "status.json").read_text())["status"] == "finished"
