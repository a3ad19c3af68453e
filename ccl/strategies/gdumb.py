"""GDumb (Prabhu et al., ECCV 2020): at every step a fresh learner trained on the memory alone,
to convergence, with its own optimiser and schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from avalanche.core import SupervisedPlugin

from ccl.run_config import MAX_LR
from ccl.strategies.base import STRATEGIES, Strategy
from ccl.training import reinitialise

GDUMB_SCHEDULES = ("sgdr", "cosine", "constant")
WARMUP_FACTOR = 0.1  # GDumb's warm start trains its first epoch at a tenth of the lr (src/main.py)


@dataclass(frozen=True)
class GDumbSettings:
    """How the fresh learner trains on the memory at each step; the run's --epochs, --lr,
    --batch-size, --momentum and --weight-decay do not apply to it.

    Source: drimpossible/GDumb (the paper's code, read at 4f412d7): src/opts.py's defaults
    (maxlr 0.05, minlr 0.0005, weight_decay 1e-6, batch_size 16, clip 10), src/main.py's
    `experiment` (SGD momentum 0.9; a first epoch at maxlr / 10; then
    CosineAnnealingWarmRestarts(T_0=1, T_mult=2, eta_min=minlr) stepped once an epoch;
    clip_grad_norm_ before every step) and scripts/replicate.sh (CIFAR-10: --num_passes 256,
    ResNet-18, cutmix). Departures: the lr moves every minibatch along the same curve (SGDR
    as Loshchilov and Hutter define it) rather than once an epoch; no cutmix (the memory's
    images follow --mem-augment, DSA by default, as the condensation papers train on their
    sets); fewer epochs by default (below).
    """
    # Measured on the CPU protocol (`ccl run --config configs/runs/cpu-protocol.toml --strategy
    # gdumb --memory herding --mem-size 200 --mem-dtype uint8 --seed 0`: 200 images of
    # CIFAR-10, width 64, DSA): the last epoch's training accuracy on the memory over the five
    # experiences is 0.985-1.0 at 128 epochs (final accuracy 0.378), 0.955-0.99 at 64 (0.344),
    # 0.875-0.965 at 32 and 0.69-0.94 at 16 (SGDR's lr does not depend on the epochs: the
    # 64-epoch run's epochs 15 and 31 are where shorter runs end); 1.0 on the stored images
    # at 64 and 128. The whole run took 6 min of CPU time at 128 epochs (user and system; 42
    # min of wall time on 2 cores shared with other work), 3.7 at 64. GDumb trains CIFAR-10 for
    # 256 (a GPU's budget). With the warm start and SGDR's periods doubling from 1 epoch, a
    # power of two ends a period at min_lr.
    epochs: int = 128
    lr: float = 0.05           # the peak lr (GDumb's maxlr)
    min_lr: float = 0.0005     # the floor of each cosine (GDumb's minlr, eta_min)
    # sgdr: cosine from lr to min_lr over periods that double from restart_epochs, each
    # starting at lr again; cosine: one cosine from lr to min_lr over the epochs after the
    # warm start; constant: lr throughout.
    schedule: str = "sgdr"
    restart_epochs: float = 1.0  # SGDR's first period (GDumb's T_0; T_mult is 2)
    warmup_epochs: int = 1       # epochs at lr * 0.1 before the schedule (GDumb's warm start)
    batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-6
    clip: float = 10.0         # the gradients' total norm is clipped to this before each step; 0: off

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if not 0 < self.lr <= MAX_LR:  # also refuses nan and inf
            raise ValueError(f"lr must be in (0, {MAX_LR}], got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr = {self.lr}], got {self.min_lr}")
        if self.schedule not in GDUMB_SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(GDUMB_SCHEDULES)}")
        if not 0 < self.restart_epochs < math.inf:
            raise ValueError(f"restart_epochs must be a number of epochs > 0, got {self.restart_epochs}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in 0..epochs - 1 = {self.epochs - 1}, got {self.warmup_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.weight_decay <= 1:
            raise ValueError(f"weight_decay must be in [0, 1], got {self.weight_decay}")
        if not 0 <= self.clip < math.inf:
            raise ValueError(f"clip must be a gradient norm >= 0 (0: off), got {self.clip}")


def scheduled_lr(settings: GDumbSettings, step: int, steps_per_epoch: int) -> float:
    """The lr of minibatch `step` of the fresh learner's training (counted from 0 over all
    its epochs), with `steps_per_epoch` minibatches an epoch.

    The warm start holds lr * 0.1; after it, at t epochs into the schedule, SGDR (Loshchilov
    and Hutter, ICLR 2017, eq. 5) is min_lr + (lr - min_lr) (1 + cos(pi t_cur / T_i)) / 2,
    where T_i is the current period (restart_epochs, then twice that, ...) and t_cur the
    epochs since it began; `cosine` is one period over all the epochs after the warm start.
    """
    epoch = step / steps_per_epoch  # fractional: the lr moves every minibatch
    if epoch < settings.warmup_epochs:
        return settings.lr * WARMUP_FACTOR
    if settings.schedule == "constant":
        return settings.lr
    t = epoch - settings.warmup_epochs
    if settings.schedule == "cosine":
        period = settings.epochs - settings.warmup_epochs
    else:
        period = settings.restart_epochs
        while t >= period:  # the periods double: restarts at T0, 3 T0, 7 T0, ...
            t -= period
            period *= 2
    return settings.min_lr + (settings.lr - settings.min_lr) * (1 + math.cos(math.pi * min(t / period, 1.0))) / 2


class GDumbPlugin(SupervisedPlugin):
    """Before each experience trains, the memory takes its new classes (its filler sees the
    experience's real images and the learner as it stands), the learner is re-initialised
    and its optimiser reset, and the experience's data is swapped for the memory's images;
    the learner then trains on them for GDumb's epochs, minibatch size and schedule
    (`GDumbSettings`), with clipped gradients. The strategy's epochs and minibatch size are
    put back after the experience; the optimiser is GDumb's alone (nothing else trains).

    The lr is a function of the epoch and minibatch Avalanche's clock counts, which a run
    resumed inside the experience restores: the schedule continues where it was saved.

    Departs from Avalanche's `GDumbPlugin`, which keeps its own class-balanced buffer on
    the CPU and fills it greedily from the stream: here the memory is any on-device
    class-balanced memory, real or condensed, as the condensation papers evaluate.
    The memory's images pass through `augment` (DSA under `--mem-augment dsa`) as the
    learner trains on them, with their hard labels: soft targets (PAD's learned labels)
    are not used yet, as Avalanche's dataset of the memory carries no per-row target."""

    def __init__(self, memory, settings: GDumbSettings = GDumbSettings()):
        super().__init__()
        # the whole memory, read-only, and the one thing GDumb asks of it: fill the new classes'
        # slots (a class-balanced memory's `update`; the runner refuses GDumb over the others)
        self.memory, self.fill, self.settings = memory.view, getattr(memory, "update", None), settings
        self.run_training: tuple[int, int] | None = None  # the strategy's epochs and minibatch size

    def before_train_dataset_adaptation(self, strategy, **kwargs):
        new = sorted(c for c in strategy.experience.classes_in_this_experience if c not in self.memory().classes)
        self.fill(new, strategy.model)
        reinitialise(strategy.model)
        strategy.optimized_param_id = None  # a fresh learner: Avalanche resets the optimiser too
        # Before Avalanche builds the data loader and the other plugins read the epochs
        # (a resumed run's checkpoint plugin skips the epochs done, the bar counts them).
        self.run_training = strategy.train_epochs, strategy.train_mb_size
        strategy.train_epochs, strategy.train_mb_size = self.settings.epochs, self.settings.batch_size
        for group in strategy.optimizer.param_groups:  # Avalanche's reset keeps a group's hyperparameters
            group.update(momentum=self.settings.momentum, weight_decay=self.settings.weight_decay)

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        from avalanche.benchmarks.utils.classification_dataset import \
            _make_taskaware_tensor_classification_dataset as tensor_dataset
        memory = self.memory()
        images, labels = memory.images.cpu(), memory.labels.cpu()
        strategy.adapted_dataset = tensor_dataset(images, labels, targets=labels, task_labels=0)

    def before_training_iteration(self, strategy, **kwargs):
        clock = strategy.clock  # restored by a resumed run's checkpoint plugin, which runs first
        steps = len(strategy.dataloader)
        lr = scheduled_lr(self.settings, clock.train_exp_epochs * steps + clock.train_epoch_iterations, steps)
        for group in strategy.optimizer.param_groups:
            group["lr"] = lr

    def before_forward(self, strategy, **kwargs):
        augment = self.memory().augment
        if augment is not None:
            strategy.mbatch[0] = augment(strategy.mbatch[0])

    def before_update(self, strategy, **kwargs):
        if self.settings.clip > 0:
            torch.nn.utils.clip_grad_norm_(strategy.model.parameters(), self.settings.clip)

    def after_training_exp(self, strategy, **kwargs):
        if self.run_training is not None:
            strategy.train_epochs, strategy.train_mb_size = self.run_training
            self.run_training = None


def gdumb_training(settings: GDumbSettings) -> tuple[int, int]:
    return settings.epochs, settings.batch_size


STRATEGIES.register("gdumb", "GDumb: at each step a fresh learner trained on the memory alone (2020)")(
    Strategy(GDumbPlugin, GDumbSettings, needs_replay=False, memory_alone=True, own_training=gdumb_training))
