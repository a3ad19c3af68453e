"""Expert trajectories for trajectory matching (MTT, Cazenavette et al. 2022) and PAD's
difficulty scheduler (Li et al. 2024, "Filter 1: information extraction").

An expert is a ConvNet trained on the REAL data; its trajectory is the list of its flat
parameter vectors after every epoch, theta*_0 (the random init) .. theta*_E. Vectors are
flattened in `module.parameters()` order, which for ConvNet is input to output, so PAD's
"drop the shallow part" is a prefix of the vector.

PAD's scheduler trains each expert on a per-class window of the samples sorted easy to
hard: first the easiest `init_ratio` of each class, growing linearly to all of it; then
all of it; then all but the easiest `rm_ratio_first`; then all but the easiest
`rm_ratio_second`. The phase boundaries are stored as fractions of the expert length so
that they scale with it (the reference gives epochs 20 / 40 / 60 for 100-epoch experts).

Departures from the reference (NUS-HPC-AI-Lab/PAD, buffer/buffer_CL.py):
- Plain SGD (lr 0.01, no momentum, as MTT's buffer.py); the reference's PAD buffer
  script wraps it in GSAM (sharpness-aware, from FTD).
- Each class's real count is used; the reference hard-codes 5,000 samples per class.
- A window never becomes empty: at least one sample of every class stays in.
- With `expert_min_steps` (configs/pad.toml) the batch shrinks on small sets so that an
  epoch takes that many steps (`expert_batch`); the reference's 256 is for 50,000 images.
- Networks start no block on a map under 4x4 (`make_network`, `fitting_depth`); the
  reference ConvNet is for 32x32 images (it pads 28x28 ones to 32).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ccl.condense.dsa import DSASettings, augmenter
from ccl.models.convnet import ConvNet, fitting_depth
from ccl.training import sgd_epoch



class ExpertSettings(Protocol):
    """The settings experts and EL2N scoring read (PADSettings has them; this module does
    not import pad.py, which builds on it)."""
    width: int
    depth: int
    norm: str
    dsa: bool
    dsa_settings: DSASettings
    expert_lr: float
    expert_batch: int
    expert_min_steps: int
    expert_train_epochs: int
    num_experts: int
    scheduler: bool
    schedule: ExpertSchedule
    score_networks: int
    score_epochs: int

Trajectory = list[torch.Tensor]  # theta_0 .. theta_E, each a flat (P,) vector


@dataclass
class LearnerTrajectory:
    """The replay learner's training on one experience, as a trajectory to match (PAD with
    expert = "learner"), recorded by the memory (`ccl.memory.trajectory`).

    Attributes:
        snapshots: the learner's flat parameter vectors (`module.parameters()` order, on
            its device) at the experience's start and after each of its epochs.
        network: a module of the learner's architecture (its weights are not used).
        epoch_step: how far one epoch of the learner's optimiser moves the parameters
            per unit gradient: lr * steps per epoch / (1 - momentum). The student starts
            at the rate that covers `expert_epochs` epochs in `syn_steps` plain SGD steps.
    """
    snapshots: Trajectory
    network: nn.Module
    epoch_step: float

    def student_lr(self, settings) -> float:
        """The student's rate under `settings` (PADSettings: expert_epochs, syn_steps)."""
        return self.epoch_step * settings.expert_epochs / settings.syn_steps


@dataclass(frozen=True)
class ExpertSchedule:
    """PAD's data scheduler; epochs are fractions of the expert length.

    Reference values (for 100-epoch experts): init_ratio 0.75, add_end 20, rm_first 40,
    rm_second 60, rm_ratio_first 0.1, rm_ratio_second 0.2.
    """

    init_ratio: float = 0.75       # easiest fraction of each class used at epoch 0
    add_end: float = 0.2           # harder samples are added linearly until this point
    rm_first: float = 0.4          # all data until here, then drop rm_ratio_first
    rm_second: float = 0.6         # from here on drop rm_ratio_second
    rm_ratio_first: float = 0.1    # easiest fraction dropped in the first removal phase
    rm_ratio_second: float = 0.2   # easiest fraction dropped in the second removal phase

    def __post_init__(self) -> None:
        if not 0.0 < self.init_ratio <= 1.0:
            raise ValueError(f"schedule init_ratio must be in (0, 1], got {self.init_ratio}")
        if not 0.0 <= self.add_end <= self.rm_first <= self.rm_second <= 1.0:
            raise ValueError("schedule phase ends must satisfy 0 <= add_end <= rm_first <= "
                             f"rm_second <= 1 (fractions of the expert length), got add_end="
                             f"{self.add_end}, rm_first={self.rm_first}, rm_second={self.rm_second}")
        for name in ("rm_ratio_first", "rm_ratio_second"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"schedule {name} must be in [0, 1), got {getattr(self, name)}")

    def phase_epochs(self, num_epochs: int) -> tuple[int, int, int]:
        """(add_end, rm_first, rm_second) as epochs of a `num_epochs`-epoch expert."""
        return (round(self.add_end * num_epochs), round(self.rm_first * num_epochs),
                round(self.rm_second * num_epochs))


def scheduled_fraction(epoch: int, num_epochs: int, schedule: ExpertSchedule) -> tuple[float, float]:
    """Window (start, stop) of each class's easy-to-hard order trained on in `epoch`.

    Epoch e (0-based) takes theta_e to theta_{e+1}. Boundaries are inclusive, as in the
    reference: e <= add_end adds, e <= rm_first keeps all, e <= rm_second drops the first
    ratio, later epochs drop the second.

    Args:
        epoch: 0 .. num_epochs - 1.
        num_epochs: expert length E.
        schedule: the phase fractions.

    Returns:
        (start, stop) fractions: the class's samples order[int(start*n) : int(stop*n)].
    """
    add_end, rm_first, rm_second = schedule.phase_epochs(num_epochs)
    if epoch <= add_end:
        # Reference `linear_cl_scheduler_acse`: a + (1 - a) * e / add_end, capped at 1.
        grown = 1.0 if add_end == 0 else schedule.init_ratio + (1.0 - schedule.init_ratio) * epoch / add_end
        return 0.0, min(1.0, grown)
    if epoch <= rm_first:
        return 0.0, 1.0
    if epoch <= rm_second:
        return schedule.rm_ratio_first, 1.0
    return schedule.rm_ratio_second, 1.0


def kept_indices(epoch: int, num_epochs: int, order: dict[int, torch.Tensor],
                 schedule: ExpertSchedule) -> torch.Tensor:
    """Indices of the real samples used in `epoch`, from every class's own count.

    Args:
        epoch: 0 .. num_epochs - 1.
        num_epochs: expert length E.
        order: {class: (n_c,) long indices into the real set, easiest first}.
        schedule: the phase fractions.

    Returns:
        (K,) long indices, class by class.
    """
    start, stop = scheduled_fraction(epoch, num_epochs, schedule)
    parts = []
    for idx in order.values():
        n = idx.numel()
        hi = max(1, min(n, int(stop * n)))   # floor as the reference; never empty
        lo = min(int(start * n), hi - 1)
        parts.append(idx[lo:hi])
    return torch.cat(parts)  # (K,)


def make_network(settings: ExpertSettings, num_classes: int, shape: tuple[int, ...],
                 device: torch.device | str) -> ConvNet:
    """A freshly initialised ConvNet of the settings' width / depth / norm on `device`;
    fewer blocks than `depth` on images too small for them (`fitting_depth`: 2 on 8x8)."""
    channels, height = shape[0], shape[1]
    return ConvNet(num_classes, channels, height, settings.width, fitting_depth(height, settings.depth),
                   settings.norm).to(device)


def expert_batch(settings: ExpertSettings, images: int) -> int:
    """The experts' (and EL2N scorers') minibatch on `images` training images:
    `expert_batch`, smaller where an epoch would take fewer than `expert_min_steps` steps.

    The reference's 256 gives CIFAR's 50,000 images 196 steps an epoch; on the 1,437
    digits it gives 6, and 8 epochs of them at lr 0.01 left the experts near uniform.
    A minimum of steps keeps an expert epoch a real stretch of training on
    small sets (a split experience, digits) and changes nothing on large ones."""
    if settings.expert_min_steps <= 0:
        return settings.expert_batch
    return max(1, min(settings.expert_batch, math.ceil(images / settings.expert_min_steps)))


def flat_parameters(net: nn.Module) -> torch.Tensor:
    """(P,) detached copy of the parameters in `net.parameters()` order."""
    return nn.utils.parameters_to_vector(net.parameters()).detach()


def train_expert(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 device: torch.device | str, settings: ExpertSettings,
                 order: dict[int, torch.Tensor] | None = None, epochs: int | None = None) -> Trajectory:
    """Train one expert and return its trajectory theta*_0 .. theta*_epochs on `device`.

    Args: as `train_experts`.
    """
    net = make_network(settings, num_classes, tuple(images.shape[1:]), device)
    # Reference: SGD lr 0.01, no momentum, no weight decay.
    optimizer = torch.optim.SGD(net.parameters(), lr=settings.expert_lr)
    dsa = augmenter(settings.dsa_settings if settings.dsa else None)
    length = settings.expert_train_epochs  # the schedule's phases are fractions of it
    everything = torch.arange(images.shape[0], device=device)  # (N,)
    batch = expert_batch(settings, images.shape[0])  # one size for every epoch, from all N
    trajectory = [flat_parameters(net)]
    for epoch in range(length if epochs is None else epochs):
        if order is None:
            indices = everything
        else:
            indices = kept_indices(epoch, length, order, settings.schedule)
        sgd_epoch(net, images, labels, indices, optimizer, batch, dsa)
        trajectory.append(flat_parameters(net))
    return trajectory


def train_experts(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  device: torch.device | str, settings: ExpertSettings,
                  order: dict[int, torch.Tensor] | None = None, epochs: int | None = None) -> list[Trajectory]:
    """Train `settings.num_experts` experts on the real data.

    Args:
        images: (N, C, H, W) real images (moved to `device`).
        labels: (N,) long labels in [0, num_classes).
        num_classes: outputs of the networks.
        device: where the networks train and the trajectories live.
        settings: ExpertSettings (num_experts, expert_train_epochs, expert_lr, expert_batch,
            expert_min_steps, dsa, scheduler, network shape).
        order: {class: indices easiest first} from `order_by_difficulty`; required when
            `settings.scheduler` is on, ignored (all data every epoch) when it is off.
        epochs: train only the first `epochs` epochs of each expert's expert_train_epochs
            (its schedule unchanged), a prefix of the whole trajectory: matching reads no
            epoch past max_start_epoch + expert_epochs, and the rest is most of the cost.
            None: all of them.

    Returns:
        num_experts trajectories, each epochs + 1 (expert_train_epochs + 1) flat (P,) vectors.
    """
    if epochs is not None and not 1 <= epochs <= settings.expert_train_epochs:
        raise ValueError(f"epochs must be in 1..expert_train_epochs ({settings.expert_train_epochs}), got {epochs}")
    if settings.scheduler and order is None:
        raise ValueError("settings.scheduler is on but no difficulty order was given; pass "
                         "order=order_by_difficulty(el2n_scores(...), labels) or set scheduler=False")
    images, labels = images.to(device), labels.to(device)
    if order is not None:
        order = {c: idx.to(device) for c, idx in order.items()}
    use_order = order if settings.scheduler else None
    return [train_expert(images, labels, num_classes, device, settings, use_order, epochs)
            for _ in range(settings.num_experts)]


def parameter_count(settings: ExpertSettings, num_classes: int, shape: tuple[int, ...]) -> int:
    """Number of scalars P of a trajectory vector (built on the CPU, no training)."""
    return sum(p.numel() for p in make_network(settings, num_classes, shape, "cpu").parameters())

