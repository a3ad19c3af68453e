"""Training throughput of the on-device memory against Avalanche's ReplayPlugin.

Both train the same learner on the second experience of split-cifar10 (the memory is
filled after the first) with the same memory size and batch sizes; the figure is images
per second seen by the learner (current + memory samples), and their ratio.

    python benchmarks/bench_replay.py --data-dir DIR [--device cuda] [--train-per-class 500] [--repeats 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import torch  # noqa: E402
from avalanche.core import SupervisedPlugin  # noqa: E402

from ccl.runner import _build, make_config, prepare, seed_everything  # noqa: E402


class Counter(SupervisedPlugin):
    """Counts images that reach the learner (after replay samples were added)."""

    def __init__(self):
        super().__init__()
        self.images = 0

    def after_forward(self, strategy, **kwargs):
        self.images += len(strategy.mb_y)


def throughput(memory: str, args) -> float:
    cfg = make_config(scenario="split-cifar10", data_dir=args.data_dir, memory=memory, mem_size=args.mem_size,
                      mem_batch=args.batch_size, batch_size=args.batch_size, epochs=args.epochs,
                      train_per_class=args.train_per_class, device=args.device, download=False)
    p = prepare(cfg)
    seed_everything(0)
    bench, strategy, _ = _build(p, Path(tempfile.mkdtemp()), progress=False)
    strategy.train(bench.train_stream[0])  # fills the memory
    counter = Counter()
    strategy.plugins.append(counter)
    if p.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    strategy.train(bench.train_stream[1])
    if p.device.type == "cuda":
        torch.cuda.synchronize()
    return counter.images / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mem-size", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32, help="current and memory samples per minibatch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best counts")
    args = parser.parse_args()
    # Alternate and keep each one's best of --repeats: the first run in a process also pays
    # for warm-up (allocator, thread pools), which would otherwise count against it.
    runs = {"random": [], "reservoir": []}
    for _ in range(args.repeats):
        for memory, figures in runs.items():
            figures.append(throughput(memory, args))
    device_mem, avalanche_mem = max(runs["random"]), max(runs["reservoir"])
    print(f"on-device memory plugin : {device_mem:8.1f} images/s")
    print(f"Avalanche ReplayPlugin  : {avalanche_mem:8.1f} images/s")
    print(f"ratio                   : {device_mem / avalanche_mem:8.2f}x")


if __name__ == "__main__":
    main()
