"""Control for condensed memories: `herding` whose images get random (unmatched) changes
of a given mean size, to tell a condensing memory's matched changes from two confounds:
any small change to the images, and the other minibatch order that a condensation's
random draws give the learner. Split CIFAR-10 only (it reads CIFAR-10's normalisation).

    python benchmarks/perturbed_herding.py --levels 2 -- --config configs/runs/cpu-protocol.toml \\
        --data-dir DIR --mem-augment dsa --seed 0

Everything after `--` goes to `ccl run --memory herding`. DataDAM's CPU preset moves its
herding start by 2 pixel levels (of 255) on average; docs/results.md (2026-11-30) gives
what this control measured beside it.
"""
from __future__ import annotations

import argparse
import sys

import torch

from ccl.condense.bounds import channel_range, project_
from ccl.data.cifar import CIFAR10
from ccl.memory import fillers


def perturbing(levels: float):
    herding_fill = fillers.HerdingFiller.fill
    std = torch.tensor(CIFAR10.std).view(1, -1, 1, 1)
    sigma = (levels / 255) / (2 / torch.pi) ** 0.5  # Gaussian noise with E|x| = levels/255 in pixel units

    def fill(self, real, labels, budget, learner, context=None, later=None):
        images, image_labels = herding_fill(self, real, labels, budget, learner, context, later)
        noise = torch.randn_like(images) * sigma / std.to(images.device)
        return project_(images + noise, channel_range(real.to(images.device))), image_labels
    return fill


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=float, default=2.0, help="mean absolute change, in pixel levels of 255")
    args, rest = parser.parse_known_args()
    rest = [a for a in rest if a != "--"]
    fillers.HerdingFiller.fill = perturbing(args.levels)
    from ccl.cli import main as ccl_main
    sys.exit(ccl_main(["run", "--scenario", "split-cifar10", "--memory", "herding", *rest]))


if __name__ == "__main__":
    main()
