"""How far a condensing memory moves its images from their herding start, per experience,
in pixel levels of 255 (mean, 90th percentile, max), printed beside a normal `ccl run`.

    python benchmarks/condensation_movement.py run --scenario split-digits --mem-size 20 --memory datadam

Arguments are `ccl`'s. Needs a memory that starts from herding, keeps its order and
holds nothing out (`init = "herding"`, `nested = true`, `holdout = 0`, as
configs/datadam.toml), so that each condensed image lines up with the exemplar it
started from. docs/results.md (2026-11-30, "a step sized for the image") gives what it
measured.
"""
from __future__ import annotations

import sys

from ccl.condense.bounds import channel_range
from ccl.memory import fillers

condense_fill = fillers.CondenseFiller.fill


def fill_and_measure(self, real, labels, budget, learner, context=None, later=None):
    images, image_labels = condense_fill(self, real, labels, budget, learner, context, later)
    if getattr(self.settings, "init", None) != "herding" or not getattr(self.settings, "nested", False):
        print("movement: needs init = herding and nested = true; nothing measured", flush=True)
        return images, image_labels
    real, labels = real.to(self.device), labels.to(self.device)
    if self.filler_settings.holdout > 0:
        print("movement: holdout > 0 starts from a subset; set holdout=0 to measure", flush=True)
        return images, image_labels
    start, _ = fillers.herding_exemplars(real, labels, budget, learner)
    low, high = channel_range(real)
    levels = ((images - start).abs() / (high - low) * 255).flatten()
    print(f"movement: classes {list(budget)} ({list(budget.values())} images): mean "
          f"{levels.mean():.2f} levels of 255, p90 {levels.quantile(0.9):.2f}, max {levels.max():.1f}",
          flush=True)
    return images, image_labels


if __name__ == "__main__":
    fillers.CondenseFiller.fill = fill_and_measure
    from ccl.cli import main
    sys.exit(main(sys.argv[1:]))
