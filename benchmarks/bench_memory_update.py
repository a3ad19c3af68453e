"""Seconds each memory spends filling its slots at every experience of the CPU protocol.

The CPU protocol (configs/runs/cpu-protocol.toml): Split CIFAR-10, 1,000 training images
per class, a width-64 ConvNet learner, 200 memory images. This replays only the memory
updates of such a run (no training, no evaluation): for each experience the plugin
shrinks the old classes and fills the new ones from their real images, with the learner
the filler sees held fixed at a random initialisation (fill time does not depend on what
the learner learned). Prints one row per memory: seconds per experience and in all.

    python benchmarks/bench_memory_update.py --data-dir DIR [--memories random,herding,datadam] [--set k=v]

`--set` overrides apply to every condensing memory, e.g. `--set iterations=50`.
"""
from __future__ import annotations

import argparse
import time

import torch

from ccl.config import parse_override
from ccl.memory import DeviceMemoryPlugin
from ccl.runner import make_config, prepare
from ccl.training import pick_device, seed_everything


def memory_update_seconds(memory: str, data_dir: str, overrides: dict, seed: int = 0) -> list[float]:
    cfg = make_config(scenario="split-cifar10", train_per_class=1000, width=64, epochs=3, mem_size=200,
                      memory=memory, data_dir=data_dir, download=False, seed=seed,
                      memory_settings=overrides if memory not in ("random", "herding") else {})
    p = prepare(cfg)
    seed_everything(seed)
    from ccl.models import build_learner
    learner = build_learner("convnet", p.data.num_classes, p.data.shape, cfg.width, cfg.depth, cfg.norm).to(p.device)
    train_x, train_y = p.data.normalise(p.data.train_x), torch.from_numpy(p.data.train_y)

    def real_images(classes):
        mask = torch.isin(train_y, torch.tensor(classes))
        return train_x[mask], train_y[mask]

    plugin = DeviceMemoryPlugin(cfg.mem_size, cfg.mem_batch, p.spec.make_filler(p.device, p.settings, False),
                                real_images, p.device, schedule=p.experience_classes)
    seconds = []
    for classes in p.experience_classes:
        start = time.perf_counter()
        plugin.update(sorted(classes), learner)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--memories", default="random,herding,dm,datadam,pad")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    overrides = dict(parse_override(o) for o in args.overrides)
    print(f"device {pick_device('auto')}, torch threads {torch.get_num_threads()}")
    print(f"{'memory':<10} " + " ".join(f"{f'exp {i + 1}':>8}" for i in range(5)) + f" {'total s':>9}")
    for memory in args.memories.split(","):
        seconds = memory_update_seconds(memory, args.data_dir, overrides)
        print(f"{memory:<10} " + " ".join(f"{s:8.1f}" for s in seconds) + f" {sum(seconds):9.1f}", flush=True)


if __name__ == "__main__":
    main()
