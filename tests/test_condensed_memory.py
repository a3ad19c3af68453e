"""The condensing memory: valid pixels, sets matched at every size the schedule cuts them
to, and a recorded per-class choice between condensed images and their real start."""
import json

import torch

from ccl.memory.fillers import keep_if_better
from ccl.models.convnet import ConvNet
from ccl.runner import make_config, prepare, run

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
    # (20 images, two new classes a time: 10, then 5, 4 (the remainder goes to the oldest), 3, 2)
    assert updates[0]["matched_sizes"] == {str(c): [10, 5, 4, 3, 2] for c in updates[0]["new_classes"]}
