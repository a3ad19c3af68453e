"""Training throughput of the on-device memory against Avalanche's ReplayPlugin and
against a plain PyTorch loop (the ceiling: no framework, the same learner and batches).

All train the same learner on the second experience of split-cifar10 (the memory is
filled after the first) with the same memory size and batch sizes, without memory
augmentation; the figure is images per second seen by the learner (current + memory
samples), and the ratios.

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

from ccl.experiment import make_config, prepare  # noqa: E402
from ccl.runner import _build  # noqa: E402
from ccl.training import seed_everything  # noqa: E402


class Counter(SupervisedPlugin):
    """Counts images that reach the learner (after replay samples were added)."""

    def __init__(self):
        super().__init__()
        self.images = 0

    def after_forward(self, strategy, **kwargs):
        self.images += len(strategy.mb_y)


def throughput(memory: str, args) -> float:
    cfg = make_config(scenario="split-cifar10", data_dir=args.data_dir, memory=memory, mem_size=args.mem_size,
                      mem_augment="none",
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


def plain_loop(args) -> float:
    """The same second experience in a bare PyTorch loop: shuffled current images on the
    device, `batch_size` of them plus `batch_size` random memory images per step, one
    cross-entropy, SGD. What replay costs with nothing around it."""
    cfg = make_config(scenario="split-cifar10", data_dir=args.data_dir, memory="random", mem_size=args.mem_size,
                      mem_augment="none", mem_batch=args.batch_size, batch_size=args.batch_size,
                      epochs=args.epochs, train_per_class=args.train_per_class, device=args.device, download=False)
    p = prepare(cfg)
    seed_everything(0)
    from ccl.models import build_learner
    model = build_learner(cfg.model, p.data.num_classes, p.data.shape, cfg.width, cfg.depth, cfg.norm).to(p.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    x, y = p.data.normalise(p.data.train_x), torch.from_numpy(p.data.train_y)
    first, second = (torch.isin(y, torch.tensor(g)) for g in p.experience_classes[:2])
    memory_x, memory_y = x[first][:cfg.mem_size].to(p.device), y[first][:cfg.mem_size].to(p.device)
    x, y = x[second].to(p.device), y[second].to(p.device)
    images = 0
    if p.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(y), device=p.device)
        for i in range(0, len(y), cfg.batch_size):
            idx, mem = order[i:i + cfg.batch_size], torch.randint(len(memory_y), (cfg.mem_batch,), device=p.device)
            bx, by = torch.cat([x[idx], memory_x[mem]]), torch.cat([y[idx], memory_y[mem]])
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(bx), by).backward()
            optimizer.step()
            images += len(by)
    if p.device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


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
    runs = {"random": [], "reservoir": [], "plain": []}
    for _ in range(args.repeats):
        for memory, figures in runs.items():
            figures.append(plain_loop(args) if memory == "plain" else throughput(memory, args))
    device_mem, avalanche_mem, plain = (max(runs[k]) for k in ("random", "reservoir", "plain"))
    print(f"on-device memory plugin : {device_mem:8.1f} images/s")
    print(f"Avalanche ReplayPlugin  : {avalanche_mem:8.1f} images/s")
    print(f"plain PyTorch loop      : {plain:8.1f} images/s")
    print(f"plugin / ReplayPlugin   : {device_mem / avalanche_mem:8.2f}x")
    print(f"plugin / plain loop     : {device_mem / plain:8.2f}x")


if __name__ == "__main__":
    main()
