"""Benchmark PAD: seconds per matching iteration and peak memory by N, with and without
step recomputation, and the cost of scoring + training experts for one Split CIFAR-10
experience.

Random tensors stand in for data and trajectories: the cost does not depend on the
values. Run from the repository root (or with the package installed):

    PYTHONPATH=. python benchmarks/bench_pad.py --device cpu --steps 10,20,40 --iterations 1
    PYTHONPATH=. python benchmarks/bench_pad.py --device cuda --steps 10,20,40,80 --iterations 5

Each (N, mode) runs in a fresh process, so the CPU peak (the process's maximum resident
set size) belongs to that configuration alone; it includes the ~0.4 GiB of torch itself.
"full" keeps all N unrolled graphs (the reference); "recompute" keeps N parameter
vectors and rebuilds one step's graph at a time in the backward pass.
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from ccl.condense.el2n import el2n_scores, order_by_difficulty
from ccl.condense.experts import make_network, train_experts
from ccl.condense.pad import PADSettings, deep_parameter_start, distill
from ccl.memory import split_settings


def now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def time_matching(args: argparse.Namespace, steps: int, recompute: bool) -> tuple[float, float]:
    """(median seconds per iteration, peak memory GiB) of one configuration, in this process."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (3, args.image_size, args.image_size)
    settings = PADSettings(iterations=1, syn_steps=steps, expert_epochs=1, max_start_epoch=0,
                           expert_train_epochs=1, batch_syn=args.batch_syn, alpha=args.alpha,
                           width=args.width, depth=args.depth, progress_every=1,
                           recompute_steps=recompute)
    start = torch.nn.utils.parameters_to_vector(
        make_network(settings, args.classes, shape, device).parameters()).detach()  # (P,)
    trajectories = [[start, start + 1e-3 * torch.randn_like(start)]]
    images = torch.randn(args.classes * args.ipc, *shape, device=device)  # (S, C, H, W)
    labels = torch.arange(args.classes, device=device).repeat_interleave(args.ipc)  # (S,)
    keep_from = deep_parameter_start(start.numel(), args.alpha)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(args.iterations + args.warmup):
        began = now(device)
        images, _ = distill(trajectories, images, labels, args.classes, settings, keep_from,
                         progress=False)
        seconds.append(now(device) - began)
    return statistics.median(seconds[args.warmup:]), peak_memory_gib(device)


def bench_matching(args: argparse.Namespace) -> None:
    """Seconds per distillation iteration (unroll N steps + backward + SGD step) by N and mode."""
    print(f"matching: ConvNet-{args.depth} width {args.width}, {args.classes} classes x IPC "
          f"{args.ipc}, batch_syn {args.batch_syn}, {args.image_size}x{args.image_size}, "
          f"device {args.device}, median of {args.iterations} iteration(s)")
    spawn = multiprocessing.get_context("spawn")
    for steps in args.steps:
        for recompute in args.modes:
            # A fresh process: its peak memory is this configuration's alone.
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                seconds, peak = pool.submit(time_matching, args, steps, recompute).result()
            mode = "recompute" if recompute else "full"
            print(f"  N={steps:3d} {mode:>9}: {seconds:7.2f} s/iteration, "
                  f"{steps / seconds:6.1f} student steps/s, peak memory {peak:5.2f} GiB", flush=True)


def bench_experience(args: argparse.Namespace, device: torch.device) -> None:
    """Seconds to EL2N-score and train experts on one experience (2 classes), `--preset`."""
    n = args.exp_images_per_class
    settings, _ = split_settings("pad", args.preset, {})  # a replay preset's filler keys (holdout) set aside
    real = torch.randn(2 * n, 3, args.image_size, args.image_size, device=device)  # (N, C, H, W)
    labels = torch.arange(2, device=device).repeat_interleave(n)  # (N,)
    began = now(device)
    order = order_by_difficulty(el2n_scores(real, labels, 2, device, settings), labels)
    score_s = now(device) - began
    began = now(device)
    train_experts(real, labels, 2, device, settings, order)
    experts_s = now(device) - began
    epochs = settings.score_networks * settings.score_epochs
    print(f"experience ({args.preset} preset): 2 classes x {n} images, width {settings.width}: "
          f"scoring {settings.score_networks} nets x {settings.score_epochs} epochs {score_s:.1f} s"
          f" ({score_s / max(epochs, 1):.2f} s/epoch); experts {settings.num_experts} x "
          f"{settings.expert_train_epochs} epochs {experts_s:.1f} s "
          f"({experts_s / (settings.num_experts * settings.expert_train_epochs):.2f} s/epoch, "
          "scheduled epochs see fewer images)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", default="10,20,40", help="comma-separated N values")
    parser.add_argument("--modes", default="recompute,full", help="recompute and/or full")
    parser.add_argument("--iterations", type=int, default=2, help="timed iterations per N")
    parser.add_argument("--warmup", type=int, default=0, help="untimed iterations per N")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--batch-syn", type=int, default=100, help="reference: the whole set")
    parser.add_argument("--alpha", type=float, default=0.5, help="CIFAR-10 IPC 10 reference")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--skip-matching", action="store_true")
    parser.add_argument("--skip-experience", action="store_true")
    group = parser.add_argument_group("experience (scoring + experts)")
    group.add_argument("--exp-images-per-class", type=int, default=1000)
    group.add_argument("--preset", default="pad", help="settings preset (configs/) [pad: the CPU one]")
    args = parser.parse_args()
    args.steps = [int(s) for s in args.steps.split(",")]
    args.modes = [{"recompute": True, "full": False}[m] for m in args.modes.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if not args.skip_matching:
        bench_matching(args)
    if not args.skip_experience:
        bench_experience(args, device)


if __name__ == "__main__":
    main()
