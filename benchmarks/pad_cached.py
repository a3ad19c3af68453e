"""PAD at its paper's settings from a cached expert set: the GPU check's PAD step.

PAD's cost is mostly its experts (EL2N scoring networks, then num_experts networks trained
expert_train_epochs epochs each on every real image), and matching reads only their first
max_start_epoch + expert_epochs epochs. This trains that prefix once into a cache file, or
reads the cache an earlier run left when its data, settings and seed are the same, then
times a few matching iterations, matches for as many more as fit in --seconds, and
writes a set that `ccl evaluate` reads (the format of `ccl condense --out`).

    python benchmarks/pad_cached.py --data-dir DIR --experts CACHE.pt --out SET.pt \\
        [--config pad-paper] [--set KEY=VALUE ...] [--ipc 10] [--seconds 240] [--train-per-class N]

The set's `stats` say what was cut: `iterations` run against the settings' own,
`experts_cached`, `experts_s` (0 when cached), `seconds_per_iteration`.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from ccl.condense.el2n import el2n_scores, order_by_difficulty
from ccl.condense.experts import train_experts
from ccl.memory import split_settings
from ccl.condense.pad import PADSettings, condense
from ccl.config import parse_override, to_dict
from ccl.data import load_dataset
from ccl.io import load_torch, save_torch
from ccl.report import save_image_grid
from ccl.training import now, pick_device, seed_everything

CALIBRATION_ITERATIONS = 2  # timed first; their set-up cost makes the estimate cautious


def expert_key(settings: PADSettings, fingerprint: dict, seed: int, epochs: int) -> dict:
    """What a cached expert set must match to stand for the experts these settings train:
    the data, the seed, every setting the scoring and the experts read, the prefix length."""
    read = ("width", "depth", "norm", "dsa", "dsa_settings", "expert_lr", "expert_batch", "expert_min_steps",
            "expert_train_epochs", "num_experts", "scheduler", "score_networks", "score_epochs")
    values = to_dict(settings)
    return {"data": fingerprint, "seed": seed, "epochs": epochs,
            **{k: v for k, v in values.items() if k in read or k.startswith("schedule_")}}


def cached_experts(path: Path, key: dict, real: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   device: torch.device, settings: PADSettings) -> tuple[list, float, bool]:
    """(trajectories, seconds spent training them, whether they came from the cache)."""
    if path.exists():
        saved = load_torch(path, "PAD expert cache")
        if isinstance(saved, dict) and saved.get("key") == key:
            return [list(t.unbind(0)) for t in saved["trajectories"]], 0.0, True
        print(f"{path}: made for other data or settings; training the experts again")
    began = now(device)
    order = order_by_difficulty(el2n_scores(real, labels, num_classes, device, settings), labels) \
        if settings.scheduler else None
    trajectories = train_experts(real, labels, num_classes, device, settings, order, epochs=key["epochs"])
    seconds = now(device) - began
    stacked = torch.stack([torch.stack(t) for t in trajectories]).cpu()  # (experts, epochs + 1, P)
    save_torch(path, {"key": key, "trajectories": stacked, "seconds": seconds})
    return trajectories, seconds, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--experts", type=Path, required=True, help="the expert cache: read if it fits, else written")
    parser.add_argument("--out", type=Path, required=True, help="the set (.pt, and a .png grid beside it)")
    parser.add_argument("--config", default="pad-paper", help="PAD preset (configs/) [pad-paper]")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, help="the first N training images of each class")
    parser.add_argument("--seconds", type=float, default=240.0, help="for all of it, experts included")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    started = time.perf_counter()

    settings, _ = split_settings("pad", args.config, dict(parse_override(o) for o in args.overrides))
    if settings.expert != "trained":
        parser.error("PAD's cached experts are trained experts: expert = 'learner' needs `ccl run`")
    prefix = settings.max_start_epoch + settings.expert_epochs  # the last epoch matching reads
    if prefix < settings.expert_train_epochs and (settings.soft_labels or settings.init == "correct"):
        parser.error("soft labels and init 'correct' read the experts' final epoch, which the cache "
                     "(epochs 0..max_start_epoch + expert_epochs) does not hold")
    device = pick_device(args.device)
    data = load_dataset(args.dataset, args.data_dir)
    if args.train_per_class:
        data = data.first_per_class(args.train_per_class)
    real, labels = data.normalise(data.train_x).to(device), torch.from_numpy(data.train_y).to(device)
    budget = {c: args.ipc for c in range(data.num_classes)}  # budget order = class order: labels stay as they are

    seed_everything(args.seed)
    key = expert_key(settings, data.fingerprint(), args.seed, prefix)
    experts, experts_s, cached = cached_experts(args.experts, key, real, labels, data.num_classes, device, settings)

    calibration: dict = {}
    seed_everything(args.seed)
    condense(real, labels, budget, device, dataclasses.replace(settings, iterations=CALIBRATION_ITERATIONS),
             progress=False, stats=calibration, experts=experts)
    per_iteration = calibration["match_s"] / CALIBRATION_ITERATIONS
    left = args.seconds - (time.perf_counter() - started)
    iterations = max(1, min(settings.iterations, int(left / per_iteration)))

    stats: dict = {}
    seed_everything(args.seed)
    began = time.perf_counter()
    ran = dataclasses.replace(settings, iterations=iterations)
    result = condense(real, labels, budget, device, ran, progress=False, stats=stats, experts=experts)
    images, image_labels = result
    seconds = time.perf_counter() - began
    stats.update(iterations=iterations, paper_iterations=settings.iterations, experts_cached=cached,
                 experts_s=experts_s, expert_epochs_cached=prefix, seconds_per_iteration=stats["match_s"] / iterations)
    save_torch(args.out, {"images": images.cpu(), "labels": image_labels.cpu(), "dataset": args.dataset,
                          "method": "pad", "ipc": args.ipc, "seed": args.seed, "settings": to_dict(ran),
                          "stats": stats, "seconds": seconds, "mean": data.mean, "std": data.std,
                          "class_names": data.classes, "train_per_class": args.train_per_class})
    save_image_grid(images.cpu(), image_labels.cpu(), data.mean, data.std, data.classes, args.out.with_suffix(".png"),
                    title=f"{args.dataset} pad IPC {args.ipc}, {iterations} of {settings.iterations} iterations")
    print(f"pad: {len(images)} images, {iterations} of {settings.iterations} iterations at "
          f"{stats['seconds_per_iteration']:.3f} s, experts {'cached' if cached else f'trained in {experts_s:.0f} s'} "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
