"""Training throughput of the on-device memory against Avalanche's ReplayPlugin and
against a plain PyTorch loop (the ceiling: no framework, the same learner and batches),
under ER and under DER++ with the reservoir memory.

All train the same learner on the second experience of split-cifar10 (the memory is
filled by the first) with the same memory size and batch sizes, without augmentation;
the figure is images per second seen by the learner (current + memory samples), and the
ratios. DER++: ccl's real Avalanche strategy with its plugins (`--memory reservoir
--strategy der++`) against mammoth's derpp written as a plain loop (stream CE + alpha *
MSE(logits of memory batch 1, stored logits) + beta * CE(memory batch 2), the reservoir
insert after the optimiser step), in one forward over the three batches as ccl does.

    python benchmarks/bench_replay.py --data-dir DIR [--device cuda] [--width 32] [--train-per-class 500]
        [--repeats 2] [--only er|der++] [--threads 1 --cpu-time]
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from avalanche.core import SupervisedPlugin  # noqa: E402

from ccl.experiment import make_config, prepare  # noqa: E402
from ccl.models import build_learner  # noqa: E402
from ccl.runner import _build  # noqa: E402
from ccl.training import seed_everything  # noqa: E402


clock = time.perf_counter  # --cpu-time: time.process_time


class Counter(SupervisedPlugin):
    """Counts images that reach the learner (after replay samples were added)."""

    def __init__(self):
        super().__init__()
        self.images = 0

    def after_forward(self, strategy, **kwargs):
        self.images += len(strategy.mb_y)


def bench_config(args, memory: str, strategy: str = "er"):
    return make_config(scenario="split-cifar10", data_dir=args.data_dir, memory=memory, strategy=strategy,
                       mem_size=args.mem_size, mem_augment="none", mem_batch=args.batch_size,
                       batch_size=args.batch_size, epochs=args.epochs, width=args.width,
                       train_per_class=args.train_per_class, device=args.device, download=False)


def throughput(memory: str, args, strategy: str = "er") -> float:
    """ccl's training step: the Avalanche strategy with ccl's plugins, as `ccl run` builds it."""
    cfg = bench_config(args, memory, strategy)
    p = prepare(cfg)
    seed_everything(0)
    bench, strategy, _ = _build(p, Path(tempfile.mkdtemp()), progress=False)
    strategy.train(bench.train_stream[0])  # fills the memory
    counter = Counter()
    strategy.plugins.append(counter)
    if p.device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    strategy.train(bench.train_stream[1])
    if p.device.type == "cuda":
        torch.cuda.synchronize()
    return counter.images / (clock() - start)


def plain_loop(args) -> float:
    """The same second experience in a bare PyTorch loop: shuffled current images on the
    device, `batch_size` of them plus `batch_size` random memory images per step, one
    cross-entropy, SGD. What replay costs with nothing around it."""
    cfg = bench_config(args, "random")
    p = prepare(cfg)
    seed_everything(0)
    model = build_learner(cfg.model, p.data.num_classes, p.data.shape, cfg.width, cfg.depth, cfg.norm).to(p.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    x, y = p.data.normalise(p.data.train_x), torch.from_numpy(p.data.train_y)
    first, second = (torch.isin(y, torch.tensor(g)) for g in p.experience_classes[:2])
    memory_x, memory_y = x[first][:cfg.mem_size].to(p.device), y[first][:cfg.mem_size].to(p.device)
    x, y = x[second].to(p.device), y[second].to(p.device)
    images = 0
    if p.device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
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
    return images / (clock() - start)


def plain_derpp(args) -> float:
    """mammoth's derpp (models/derpp.py) as a bare PyTorch loop over tensors on the device,
    with the settings ccl's der++ uses (alpha 0.1, beta 0.5, two memory batches of
    `batch_size` drawn without replacement): the first experience fills the reservoir
    with the logits of the forward that saw each sample, the second is timed."""
    cfg = bench_config(args, "reservoir", "der++")
    p = prepare(cfg)
    seed_everything(0)
    alpha, beta = p.strategy_settings.alpha, p.strategy_settings.beta
    device, batch, mem_batch, capacity = p.device, cfg.batch_size, cfg.mem_batch, cfg.mem_size
    model = build_learner(cfg.model, p.data.num_classes, p.data.shape, cfg.width, cfg.depth, cfg.norm).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    x, y = p.data.normalise(p.data.train_x), torch.from_numpy(p.data.train_y)
    buffer_x = torch.zeros(capacity, *x.shape[1:], device=device)  # (M, C, H, W)
    buffer_y = torch.zeros(capacity, dtype=torch.long, device=device)  # (M,)
    buffer_logits = torch.zeros(capacity, p.data.num_classes, device=device)  # (M, classes)
    seen, images = 0, 0
    for classes in p.experience_classes[:2]:
        mask = torch.isin(y, torch.tensor(classes))
        stream_x, stream_y = x[mask].to(device), y[mask].to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, images = clock(), 0
        for _ in range(cfg.epochs):
            order = torch.randperm(len(stream_y), device=device)
            for i in range(0, len(stream_y), batch):
                idx = order[i:i + batch]
                bx, by = stream_x[idx], stream_y[idx]  # (B, C, H, W), (B,)
                filled = min(seen, capacity)
                k = min(mem_batch, filled)
                if k:  # mammoth's get_data: without replacement, twice
                    first = torch.randperm(filled, device=device)[:k]
                    second = torch.randperm(filled, device=device)[:k]
                    bx = torch.cat([bx, buffer_x[first], buffer_x[second]])  # (B + 2k, C, H, W)
                output = model(bx)  # (B + 2k, classes)
                b = len(by)
                loss = F.cross_entropy(output[:b], by)
                if k:
                    loss = (loss + alpha * F.mse_loss(output[b:b + k], buffer_logits[first])
                            + beta * F.cross_entropy(output[b + k:], buffer_y[second]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                # mammoth's add_data after the step: reservoir sampling (algorithm R), batched
                nth = seen + torch.arange(1, len(by) + 1, device=device)  # (B,)
                slot = torch.where(nth <= capacity, nth - 1, (torch.rand(len(by), device=device) * nth).long())
                keep = slot < capacity
                buffer_x[slot[keep]], buffer_y[slot[keep]] = stream_x[idx][keep], by[keep]
                buffer_logits[slot[keep]] = output[:b].detach()[keep]
                seen += b
                images += len(bx)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = clock() - start
    return images / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mem-size", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32, help="current and memory samples per minibatch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--width", type=int, default=128, help="ConvNet width (32: the long CPU protocol's)")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best counts")
    parser.add_argument("--only", choices=["er", "der++"], help="one comparison only")
    parser.add_argument("--threads", type=int, help="torch's CPU threads [torch's default]")
    parser.add_argument("--cpu-time", action="store_true",
                        help="images per second of the process's CPU time, not of wall time: steadier on a CPU "
                             "that other jobs share (with --threads 1, where no thread waits on another)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        global clock
        clock = time.process_time
    # Alternate and keep each one's best of --repeats: the first run in a process also pays
    # for warm-up (allocator, thread pools), which would otherwise count against it.
    benches = {"er": {"random": lambda: throughput("random", args),
                      "reservoir": lambda: throughput("avalanche-reservoir", args),
                      "plain": lambda: plain_loop(args)},
               "der++": {"ccl": lambda: throughput("reservoir", args, "der++"),
                         "plain": lambda: plain_derpp(args)}}
    benches = {k: v for k, v in benches.items() if args.only in (None, k)}
    runs = {(name, kind): [] for name, bench in benches.items() for kind in bench}
    for _ in range(args.repeats):
        for (name, kind), figures in runs.items():
            figures.append(benches[name][kind]())
    best = {key: max(figures) for key, figures in runs.items()}
    if "er" in benches:
        device_mem, avalanche_mem, plain = (best["er", k] for k in ("random", "reservoir", "plain"))
        print(f"ER, on-device memory plugin   : {device_mem:8.1f} images/s")
        print(f"ER, Avalanche ReplayPlugin    : {avalanche_mem:8.1f} images/s")
        print(f"ER, plain PyTorch loop        : {plain:8.1f} images/s")
        print(f"ER, plugin / ReplayPlugin     : {device_mem / avalanche_mem:8.2f}x")
        print(f"ER, plugin / plain loop       : {device_mem / plain:8.2f}x")
    if "der++" in benches:
        ccl_derpp, plain = best["der++", "ccl"], best["der++", "plain"]
        print(f"DER++, ccl (reservoir memory) : {ccl_derpp:8.1f} images/s")
        print(f"DER++, plain PyTorch loop     : {plain:8.1f} images/s")
        print(f"DER++, ccl / plain loop       : {ccl_derpp / plain:8.2f}x")
        # Each ccl run and the plain run after it shared the machine's load of that moment.
        paired = sorted(a / b for a, b in zip(runs["der++", "ccl"], runs["der++", "plain"]))
        print(f"DER++, median of paired runs  : {paired[len(paired) // 2]:8.2f}x "
              f"(each: {', '.join(f'{r:.2f}' for r in paired)})")
    print("all runs (images/s):", {f"{n}/{k}": [round(v, 1) for v in f] for (n, k), f in runs.items()})


if __name__ == "__main__":
    main()
