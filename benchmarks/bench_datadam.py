"""Speed and peak memory of one DataDAM iteration at CIFAR-10 size, ccl versus reference style.

Both variants compute the same loss (instance norm, so a forward pass per class gives the
same features as one pass for all classes) on random-normal 32x32x3 "images":
10 classes, 10 synthetic images per class, 64 real images per class, ConvNet-3 width 128.

- ccl: `ccl.condense.datadam` as used by `condense` (one reused network re-initialised in
  place, indices drawn on the device, all classes' real images in one no-grad pass (on
  CPU in pieces of 32 images, channels-last), all synthetic images in one pass,
  index_add class means, no host sync).
- reference style: the structure of the DM / DataDAM reference loops: a new network
  module every iteration, per class host-side index sampling (numpy permutation), a DSA
  draw, a forward pass for the real and one for the synthetic images, the loss
  accumulated class by class, and `loss.item()` every iteration.

Each variant runs in its own process, so peak memory is its own, and the two take turns
iteration by iteration, so that other load on a shared machine slows both alike; the
median iteration is reported. Peak memory: on CUDA
`torch.cuda.max_memory_allocated`, on CPU the growth of the process's max RSS
(`resource.getrusage`; tracemalloc does not see torch's allocations).

    python -m benchmarks.bench_datadam --iterations 5 --device cpu [--threads 1] [--compile]

(from the repository root, or with ccl installed: python benchmarks/bench_datadam.py ...)

On a CPU shared with other processes, wall-clock figures swing by 2x from run to run;
`--threads 1` and the CPU-time ratio are the steadier comparison.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

CLASSES, IPC, REAL_BATCH, REAL_PER_CLASS, SIZE, WIDTH, DEPTH = 10, 10, 64, 500, 32, 128, 3


def _setup(device, compile_blocks=False):
    import torch

    from ccl.condense.datadam import DataDAMSettings

    torch.manual_seed(0)
    real = torch.randn(CLASSES * REAL_PER_CLASS, 3, SIZE, SIZE)  # (N, 3, 32, 32)
    labels = torch.arange(CLASSES).repeat_interleave(REAL_PER_CLASS)  # (N,)
    settings = DataDAMSettings(real_batch=REAL_BATCH, width=WIDTH, depth=DEPTH, norm="instance",
                               sam_weight=1.0, mmd_weight=0.01, compile=compile_blocks)
    images = torch.randn(CLASSES * IPC, 3, SIZE, SIZE, device=device, requires_grad=True)
    return real, labels, settings, images


def _ccl_step(device, compile_blocks=False):
    """Returns a function running one ccl iteration."""
    import torch

    from ccl.condense import datadam

    real, labels, settings, images = _setup(device, compile_blocks)
    classes = list(range(CLASSES))
    pool = datadam._Pool(real, labels, classes, device)
    real_group = torch.arange(CLASSES, device=device).repeat_interleave(REAL_BATCH)
    syn_group = torch.arange(CLASSES, device=device).repeat_interleave(IPC)
    net = datadam.matching_network(CLASSES, (3, SIZE, SIZE), settings, torch.device(device))
    optimizer = torch.optim.SGD([images], lr=settings.lr_images, momentum=settings.momentum)
    chunk = datadam.real_chunk(settings, torch.device(device))  # 32 on CPU, all at once on GPUs

    def step():
        datadam.reinitialise(net)
        loss = datadam._iteration_loss(net, pool, images, real_group, syn_group, CLASSES, settings,
                                       chunk)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _reference_step(device):
    """Returns a function running one reference-style iteration (same math)."""
    import numpy as np
    import torch

    from ccl.condense.datadam import attention_map, block_activations
    from ccl.condense.dsa import apply, sample_draw
    from ccl.models.convnet import ConvNet

    real, labels, settings, images = _setup(device)
    real = real.to(device)
    indices_class = [np.flatnonzero(labels.numpy() == c) for c in range(CLASSES)]
    optimizer = torch.optim.SGD([images], lr=settings.lr_images, momentum=settings.momentum)

    def step():
        net = ConvNet(CLASSES, 3, SIZE, WIDTH, DEPTH, "instance").to(device)
        net.train()
        for param in net.parameters():
            param.requires_grad = False
        loss = torch.tensor(0.0, device=device)
        for c in range(CLASSES):
            img_real = real[np.random.permutation(indices_class[c])[:REAL_BATCH]]
            img_syn = images[c * IPC:(c + 1) * IPC]
            draw = sample_draw(1, settings.dsa_settings, device)  # one transformation per class
            slot = torch.zeros(REAL_BATCH, dtype=torch.long, device=device)
            img_real = apply(img_real, draw, slot)
            img_syn = apply(img_syn, draw, slot[:IPC])
            real_blocks, real_embed = block_activations(net, img_real)
            syn_blocks, syn_embed = block_activations(net, img_syn)
            for f_real, f_syn in zip(real_blocks[:-1], syn_blocks[:-1]):
                a_real = attention_map(f_real.detach(), settings.p).mean(0)
                a_syn = attention_map(f_syn, settings.p).mean(0)
                loss = loss + settings.sam_weight * (a_real - a_syn).pow(2).sum()
            mmd = (real_embed.detach().mean(0) - syn_embed.mean(0)).pow(2).sum()
            loss = loss + settings.mmd_weight * mmd
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()

    return step


def _worker(variant: str, device: str, threads: int, compile_blocks: bool, conn) -> None:
    """Holds one variant's data; runs one timed iteration per "step" message."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    if variant == "ccl":
        step = _ccl_step(device, compile_blocks)  # builds the data
    else:
        step = _reference_step(device)
    # Peak memory is measured from here: what the iterations add on top of the data.
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _max_rss()
    conn.send("ready")
    while conn.recv() == "step":
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        if cuda:
            torch.cuda.synchronize()
        conn.send((time.perf_counter() - start, time.process_time() - cpu_start))
    peak = (torch.cuda.max_memory_allocated() if cuda else _max_rss()) - base
    conn.send((peak, 0 if cuda else _max_rss()))


def _max_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _run(device: str, iterations: int, threads: int,
         compile_blocks: bool = False) -> dict[str, tuple[float, float, int, int]]:
    """Both variants in their own processes, their iterations interleaved so that other load
    on the machine hits both alike; returns {variant: (median wall seconds, median CPU
    seconds, peak bytes, max RSS)}."""
    ctx = mp.get_context("spawn")
    workers = {}
    for variant in VARIANTS:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(variant, device, threads, compile_blocks, child))
        proc.start()
        workers[variant] = (proc, parent)
    for _, conn in workers.values():
        assert conn.recv() == "ready"
    times = {v: [] for v in VARIANTS}
    for i in range(iterations + 1):  # the first round is the warm-up (and compilation)
        for variant, (_, conn) in workers.items():
            conn.send("step")
            seconds = conn.recv()
            if i > 0:
                times[variant].append(seconds)
    results = {}
    for variant, (proc, conn) in workers.items():
        conn.send("stop")
        peak, rss = conn.recv()
        proc.join()
        wall = statistics.median(t for t, _ in times[variant])
        cpu = statistics.median(c for _, c in times[variant])
        results[variant] = (wall, cpu, peak, rss)
    return results


VARIANTS = ("reference-style", "ccl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per variant")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ...")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--compile", action="store_true",
                        help="ccl with DataDAMSettings(compile=True); compiles in the warm-up")
    args = parser.parse_args()

    print(f"DataDAM iteration: {CLASSES} classes, IPC {IPC}, real batch {REAL_BATCH}/class, "
          f"ConvNet-{DEPTH} width {WIDTH}, {SIZE}x{SIZE}x3, device {args.device}, "
          f"{args.iterations} timed iterations after 1 warm-up, interleaved (median)"
          f"{', ccl compiled' if args.compile else ''}")
    cuda = args.device.startswith("cuda")
    kind = "peak CUDA memory above the data" if cuda else "max-RSS growth above the data"
    results = _run(args.device, args.iterations, args.threads, args.compile)
    for variant, (seconds, cpu, peak, rss) in results.items():
        extra = f", process max RSS {rss / 2**20:.0f} MiB" if rss else ""
        print(f"{variant:16s} {1 / seconds:8.3f} it/s  {1000 * seconds:8.1f} ms/it  "
              f"(CPU {1000 * cpu:8.1f} ms/it)  {kind} {peak / 2**20:.0f} MiB{extra}")
    wall = results["reference-style"][0] / results["ccl"][0]
    cpu = results["reference-style"][1] / results["ccl"][1]
    print(f"speed-up ccl / reference-style: {wall:.2f}x wall clock, {cpu:.2f}x CPU time "
          "(CPU time is the steadier figure on a shared machine; it counts all threads)")


if __name__ == "__main__":
    main()
