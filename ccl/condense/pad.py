"""PAD: Prioritize Alignment in Dataset Distillation (Li et al., 2024).

PAD is trajectory matching (MTT, Cazenavette et al., CVPR 2022) with two filters:

1. What is extracted: experts train on each class's samples scheduled easy to hard by
   EL2N difficulty (`ccl.condense.el2n`, `ccl.condense.experts`).
2. What is embedded: the matching loss ignores the shallowest floor(alpha * P) of the
   P parameters, flattened input to output (`deep_parameter_start`).

MTT is this module with the scheduler off and alpha 0 (`mtt_settings`).

One distillation iteration: pick an expert and a start epoch t, copy theta*_t into a
functional student, train it N steps on minibatches of the synthetic set with a
learnable learning rate, differentiating through all N steps, and compare with the
expert M epochs later (`trajectory_matching_loss`). The gradient updates the synthetic
images and the learnable learning rate.

Departures from the reference code (NUS-HPC-AI-Lab/PAD distill/PAD_depth.py, MTT
distill.py), each also noted where it happens:
- The start epoch is uniform over [0, max_start_epoch] inclusive (the reference's
  `randint(0, max_start_epoch)` excludes the upper end).
- Soft labels (`soft_labels`, after DATM, as the reference PAD): one learnable logit
  vector per synthetic image, optimised with the images (SGD at `lr_labels`, momentum
  `labels_momentum`: the reference's lr_y 2, momentum 0.9 for CIFAR-10 IPC 10), and the
  student's inner steps take the cross-entropy to their softmax (the reference's
  `SoftCrossEntropy`, temperature 1). They start as the logits of ONE network on the
  initial images: the first expert's final parameters theta*_E (the reference's
  `buffer[0][-1]` for a real init; with its `samples_predicted_correctly` init it
  averages the logits of every expert that classifies an image correctly), or the
  learner's last snapshot with `expert = "learner"`. Off: hard labels, as MTT. Starting
  from real images the final expert classifies correctly is `init="correct"`.
- No loss threshold that skips updates (PAD's `threshold`, 1.0 in its configs).
- The learnable student lr has a floor (lr_init / 100), and NaN/inf restarts from the
  last finite images with halved rates (`distill`); the reference can diverge.
- The backward pass recomputes the student steps one at a time (`recompute_steps`),
  so memory does not grow with the graphs of N steps; the gradients are the same.

For continual learning, `condense` takes an optional `context`: labelled images of other
classes (a replay memory's old classes) that join the experts' data, repeated to the real
classes' mean count, and every student minibatch, without being optimised. The experts
then learn the new classes against the old ones, and the synthetic images must carry
that too: with two new classes alone they carry what tells those two apart (a colour
blotch can do), which a learner that also sees other classes does not keep.
"""
from __future__ import annotations

import math
import warnings
import copy
import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from ccl.condense import Condensed, LoopCheckpoint, announce_cost, progress_problem
from ccl.condense.bounds import channel_range, project_
from ccl.condense.dsa import Draw, DSASettings, apply, sample_draw
from ccl.condense.el2n import el2n_scores, order_by_difficulty
from ccl.condense.experts import (ExpertSchedule, LearnerTrajectory, Trajectory, expert_batch, flat_parameters,
                                make_network, parameter_count, train_experts)
from ccl.models.convnet import NORMS
from ccl.training import now, soft_cross_entropy

INITS = ("real", "correct", "noise", "herding")
EXPERTS = ("trained", "learner")

# PAD's alpha for CIFAR-10 by IPC (reference configs, `depth_ratio`). CIFAR-100 uses
# 0.5 / 0.5 / 0.0; pass alpha explicitly for other data sets.
REFERENCE_ALPHA: tuple[tuple[int, float], ...] = ((1, 0.0), (10, 0.5), (50, 0.25))


@dataclass(frozen=True)
class PADSettings:
    """Settings of PAD (and of MTT via `mtt_settings`).

    Defaults are the reference's CIFAR-10 IPC 10 values (the PAD paper's hyperparameter
    table): N 80, M 2, max start epoch 20, lr_img 100, lr_lr 1e-5; IPC 1 and IPC 50 differ.
    """
    # Not a setting (no annotation): the name its saved progress carries (ccl.condense.progress_problem).
    loop = "pad"

    # --- distillation (trajectory matching) ---
    iterations: int = 10_000        # matching iterations (reference 10,000)
    syn_steps: int = 80             # N: student steps on the synthetic set per iteration
    expert_epochs: int = 2          # M: expert epochs the N student steps must cover
    max_start_epoch: int = 20       # start epoch t is uniform in [min_start_epoch, max_start_epoch]
    min_start_epoch: int = 0        # DATM / PAD reference: later segments for larger IPC
    lr_img: float = 100.0           # SGD (momentum 0.5) lr on the pixels (IPC 50: 1000)
    # 0: lr_img as given. N: lr_img is the rate for N x N images, and other sizes scale it
    # by their area (H * W / N^2), as DataDAM's lr_images_side. configs/pad.toml's 1000
    # for 32x32 turned 8x8 digits into saturated blotches (IPC 1 with soft labels: 0.64
    # against random real images' 0.76); at 100 they scored 0.89.
    lr_img_side: int = 0
    lr_lr: float = 1e-5             # SGD (momentum 0.5) lr on the learnable student lr
    lr_init: float = 0.01           # initial student lr (= the experts' lr)
    batch_syn: int | None = None    # synthetic minibatch; None = the whole set (reference)
    # Fraction of shallow parameters left out of the loss; None = REFERENCE_ALPHA by the
    # smallest per-class budget (the largest reference IPC <= it).
    alpha: float | None = None
    # --- soft labels (DATM / the PAD reference) ---
    soft_labels: bool = False       # learn a logit vector per image with the images
    lr_labels: float = 2.0          # SGD lr on those logits (reference lr_y, CIFAR-10 IPC 10)
    labels_momentum: float = 0.9    # (reference Momentum_y)
    # --- experts ---
    # "trained": experts trained on the real data of the classes being condensed (the
    # paper). "learner": the replay learner's own parameters at every epoch boundary of
    # the experience just trained (`LearnerTrajectory`, recorded by the memory under `ccl
    # run`), so the images are matched to reproduce the learner's training on the new
    # classes beside the memory's old ones; no expert or EL2N training. Epochs below then
    # count the learner's epochs. `ccl condense` has no learner and trains experts.
    expert: str = "trained"
    num_experts: int = 100          # reference 100; a handful already works
    expert_train_epochs: int = 100  # E: length of each trajectory (theta_0 .. theta_E)
    expert_lr: float = 0.01         # SGD, no momentum (reference lr_teacher)
    expert_batch: int = 256         # (reference batch_train)
    # At least this many SGD steps an expert epoch: on fewer images than expert_batch *
    # expert_min_steps the batch shrinks to fit (`ccl.condense.experts.expert_batch`).
    # 0 = expert_batch always, as the reference (196 steps an epoch on CIFAR's 50,000).
    expert_min_steps: int = 0
    # --- PAD's data scheduler (phase ends as fractions of expert_train_epochs) ---
    scheduler: bool = True
    schedule_init_ratio: float = 0.75
    schedule_add_end: float = 0.2       # reference epoch 20 of 100
    schedule_rm_first: float = 0.4      # reference epoch 40 of 100
    schedule_rm_second: float = 0.6     # reference epoch 60 of 100
    schedule_rm_ratio_first: float = 0.1
    schedule_rm_ratio_second: float = 0.2
    # --- EL2N scoring (only when the scheduler is on) ---
    score_networks: int = 10        # EL2N paper: mean over 10 networks ...
    score_epochs: int = 20          # ... each trained 20 epochs (the reference ships files)
    # --- network, augmentation, init, reporting ---
    width: int = 128
    depth: int = 3
    norm: str = "instance"
    dsa: bool = True                # DSA on the experts', scorers' and student's batches
    dsa_settings: DSASettings = field(default_factory=DSASettings)
    # "real": random real images of the class; "correct": random among those the first
    # expert's final network classifies correctly (the PAD reference); "noise";
    # "herding": under `ccl run`, the learner's herding exemplars (the memory filler
    # passes them as `init`); `ccl condense` has no learner and starts from "real".
    init: str = "real"
    # Backward pass recomputes one student step at a time from the stored parameter
    # vectors: memory of one step instead of N, for one extra forward/backward per step.
    recompute_steps: bool = True
    progress_every: int = 50        # iterations between finiteness checks / bar updates
    max_recoveries: int = 3         # restarts from the last finite images on NaN/inf

    def __post_init__(self) -> None:
        positive = ("iterations", "syn_steps", "expert_epochs", "num_experts",
                    "expert_train_epochs", "expert_batch", "score_networks", "width",
                    "depth", "progress_every")
        for name in positive:
            value = getattr(self, name)
            if name == "iterations" and value == 0:
                continue  # zero iterations: return the initialisation (useful for tests)
            if value < 1:
                raise ValueError(f"PADSettings.{name} must be >= 1, got {value}")
        if not isinstance(self.expert_min_steps, int) or self.expert_min_steps < 0:
            raise ValueError(f"PADSettings.expert_min_steps must be an integer >= 0, got {self.expert_min_steps!r}")
        if self.max_start_epoch < 0 or self.score_epochs < 0 or self.max_recoveries < 0:
            raise ValueError("PADSettings.max_start_epoch, score_epochs and max_recoveries must be "
                             f">= 0, got {self.max_start_epoch}, {self.score_epochs} and "
                             f"{self.max_recoveries}")
        if not 0 <= self.min_start_epoch <= self.max_start_epoch:
            raise ValueError(f"PADSettings needs 0 <= min_start_epoch <= max_start_epoch, got "
                             f"{self.min_start_epoch} and {self.max_start_epoch}")
        if self.max_start_epoch + self.expert_epochs > self.expert_train_epochs:
            raise ValueError(
                f"max_start_epoch + expert_epochs ({self.max_start_epoch} + {self.expert_epochs}) "
                f"exceeds expert_train_epochs ({self.expert_train_epochs}): the target "
                "theta*_{t+M} would lie past the end of the trajectory; lower max_start_epoch "
                "or train longer experts")
        if self.lr_labels < 0 or not 0 <= self.labels_momentum < 1:
            raise ValueError(f"PADSettings needs lr_labels >= 0 and labels_momentum in [0, 1), got "
                             f"{self.lr_labels} and {self.labels_momentum}")
        if not isinstance(self.lr_img_side, int) or self.lr_img_side < 0:
            raise ValueError(f"PADSettings.lr_img_side must be an integer >= 0, got {self.lr_img_side!r}")
        for name in ("lr_img", "lr_init", "expert_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PADSettings.{name} must be > 0, got {getattr(self, name)}")
        if self.lr_lr < 0:
            raise ValueError(f"PADSettings.lr_lr must be >= 0, got {self.lr_lr}")
        if self.batch_syn is not None and self.batch_syn < 1:
            raise ValueError(f"PADSettings.batch_syn must be >= 1 or None (whole set), got {self.batch_syn}")
        if self.alpha is not None and not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"PADSettings.alpha must be in [0, 1) or None (by IPC), got {self.alpha}")
        if self.norm not in NORMS:
            raise ValueError(f"PADSettings.norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.expert not in EXPERTS:
            raise ValueError(f"PADSettings.expert must be one of {', '.join(EXPERTS)}, got {self.expert!r}")
        if self.init not in INITS:
            raise ValueError(f"PADSettings.init must be one of {', '.join(INITS)}, got {self.init!r}")
        self.schedule  # noqa: B018 -- builds (and so validates) the schedule fractions

    def work(self, classes: int, synthetic: int, real_per_class: float, learner_width: int) -> float:
        """A rough cost of condensing `classes` classes of `real_per_class` real images into
        `synthetic` images, in sample-passes of the learner (one image forward and backward
        through it): each iteration's student takes syn_steps steps on a synthetic batch,
        and the backward through them costs about as much again; trained experts first
        train on the real images. A ConvNet's cost grows about as its width squared; on
        the learner's trajectory the student is the learner. For a run's time estimate."""
        scale = 1.0 if self.expert == "learner" else (self.width / learner_width) ** 2
        matching = self.iterations * self.syn_steps * (self.batch_syn or synthetic) * 2
        experts = 0 if self.expert == "learner" else self.num_experts * self.expert_train_epochs * classes * real_per_class
        return (matching + experts) * scale

    @property
    def schedule(self) -> ExpertSchedule:
        """The scheduler's phase fractions as an ExpertSchedule (validated there)."""
        return ExpertSchedule(self.schedule_init_ratio, self.schedule_add_end,
                              self.schedule_rm_first, self.schedule_rm_second,
                              self.schedule_rm_ratio_first, self.schedule_rm_ratio_second)


def image_lr(settings: PADSettings, size: tuple[int, int]) -> float:
    """The pixels' SGD rate at (H, W): lr_img, scaled by area if lr_img_side is set."""
    side = settings.lr_img_side
    return settings.lr_img * (size[0] * size[1] / side ** 2 if side else 1.0)


def mtt_settings(**changes: object) -> PADSettings:
    """Plain MTT: PAD with the scheduler off and every parameter matched (alpha 0).

    Args:
        **changes: any other PADSettings fields; `scheduler` and `alpha` are fixed.
    """
    if "scheduler" in changes or "alpha" in changes:
        raise ValueError("mtt_settings fixes scheduler=False and alpha=0.0; use PADSettings to change them")
    return PADSettings(**changes, scheduler=False, alpha=0.0)  # type: ignore[arg-type]


def default_alpha(ipc: int) -> float:
    """PAD's CIFAR-10 alpha for `ipc` images per class: that of the largest reference IPC <= ipc.

    "At most" rather than "nearest" because alpha must be small for small IPC (the paper:
    small sets cannot absorb the deep, high-level information alone); IPC below 1 is
    treated as 1. So 1-9 -> 0.0, 10-49 -> 0.5, 50+ -> 0.25.
    """
    alpha = REFERENCE_ALPHA[0][1]
    for reference_ipc, value in REFERENCE_ALPHA:
        if ipc >= reference_ipc:
            alpha = value
    return alpha


def resolve_alpha(settings: PADSettings, budget: dict[int, int]) -> float:
    """settings.alpha, or `default_alpha` of the smallest per-class budget when it is None."""
    return settings.alpha if settings.alpha is not None else default_alpha(min(budget.values()))


# --- filter 2: deep-parameter matching -----------------------------------------------

def deep_parameter_start(total: int, alpha: float) -> int:
    """First matched index: PAD drops the shallowest floor(alpha * total) scalars.

    Args:
        total: scalars in the flat parameter vector, flattened input to output.
        alpha: fraction of shallow parameters to drop, in [0, 1).
    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    return math.floor(alpha * total)


def deep_parameter_mask(total: int, alpha: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """(total,) bool mask of the matched (deep) scalars; the first floor(alpha*total) are False."""
    mask = torch.ones(total, dtype=torch.bool, device=device)  # (P,)
    mask[:deep_parameter_start(total, alpha)] = False
    return mask


def trajectory_matching_loss(student_end: torch.Tensor, expert_start: torch.Tensor,
                             expert_target: torch.Tensor, keep_from: int = 0) -> torch.Tensor:
    """MTT eq. (2), over the deep part theta[keep_from:] as PAD:

        L = || theta_hat_{t+N} - theta*_{t+M} ||^2 / || theta*_t - theta*_{t+M} ||^2

    Args:
        student_end: (P,) student parameters after N steps, theta_hat_{t+N}.
        expert_start: (P,) expert parameters at the start epoch, theta*_t.
        expert_target: (P,) expert parameters M epochs later, theta*_{t+M}.
        keep_from: first matched index (`deep_parameter_start`); 0 matches everything.

    Returns:
        scalar loss; exactly 1 when the student has not moved.
    """
    target = expert_target[keep_from:]  # (P - keep_from,)
    numerator = (student_end[keep_from:] - target).pow(2).sum()
    denominator = (expert_start[keep_from:] - target).pow(2).sum()
    return numerator / denominator


# --- the functional student ------------------------------------------------------------

class FunctionalStudent:
    """Runs a network with parameters taken from ONE flat vector (views, no copies).

    The flat layout is `module.parameters()` order, the same as the expert trajectories.
    Buffers (BatchNorm statistics) stay the module's own.
    """

    def __init__(self, module: nn.Module):
        self.module = module.requires_grad_(False)  # its own weights are never used
        self.spec = [(name, p.shape) for name, p in module.named_parameters()]
        self.numel = sum(shape.numel() for _, shape in self.spec)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: view into flat} in parameter order."""
        if flat.numel() != self.numel:
            raise ValueError(f"flat vector has {flat.numel()} values, the network {self.numel}")
        params, offset = {}, 0
        for name, shape in self.spec:
            params[name] = flat[offset:offset + shape.numel()].view(shape)
            offset += shape.numel()
        return params

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, self.unflatten(flat), (x,))


Step = tuple[torch.Tensor, "Draw | None"]  # (minibatch indices (B,), DSA draw or None)


def student_plan(n: int, batch: int, steps: int, dsa: DSASettings | None,
                 device: torch.device | str) -> list[Step]:
    """The N student steps' minibatches and DSA draws, drawn up front.

    Minibatches are shuffled passes over range(n) split into `batch`-sized chunks, taken
    from the end of the pass as the reference does (`indices_chunks.pop()`): a pass's
    short remainder comes first, and a new permutation is drawn whenever one is used up.
    Under the same torch seed (and without DSA) the indices are the reference's
    (tests/test_reference.py). Fixing the draws before the unroll lets the backward pass
    recompute a step exactly.
    """
    plan: list[Step] = []
    chunks: list[torch.Tensor] = []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.randperm(n, device=device).split(batch))
        idx = chunks.pop()
        plan.append((idx, sample_draw(idx.numel(), dsa, device) if dsa is not None else None))
    return plan


def step_loss(output: torch.Tensor, idx: torch.Tensor, labels: torch.Tensor,
              soft: torch.Tensor | None) -> torch.Tensor:
    """The student's loss on one minibatch: cross-entropy to the hard labels, or, for the
    synthetic rows (idx < len(soft)), to the softmax of their learnable logits (DATM's
    `SoftCrossEntropy`: -sum softmax(soft) * log_softmax(output), averaged over the batch).

    Args:
        output: (B, K) the student's logits.
        idx: (B,) rows of the set (synthetic first, then any fixed context rows).
        labels: (S + M,) long labels of every row.
        soft: (S, K) learnable logits of the S synthetic rows, or None (hard labels).
    """
    if soft is None:
        return F.cross_entropy(output, labels[idx])
    # (B, K): the synthetic rows' logits, NaN (no soft target) for the context rows
    rows = torch.where((idx < len(soft))[:, None], soft[idx.clamp(max=len(soft) - 1)], float("nan"))
    return soft_cross_entropy(output, labels[idx], rows).mean()


def _step_gradient(student: FunctionalStudent, params: torch.Tensor, x: torch.Tensor, idx: torch.Tensor,
                   labels: torch.Tensor, soft: torch.Tensor | None, draw: Draw | None,
                   create_graph: bool) -> torch.Tensor:
    """(P,) gradient of the student's loss (`step_loss`) on one (augmented) minibatch."""
    if draw is not None:
        x = apply(x, draw)
    loss = step_loss(student(params, x), idx, labels, soft)
    (grad,) = torch.autograd.grad(loss, params, create_graph=create_graph)
    return grad


def unroll_student(student: FunctionalStudent, start: torch.Tensor, images: torch.Tensor,
                   labels: torch.Tensor, lr: torch.Tensor, plan: list[Step],
                   recompute: bool = True, soft: torch.Tensor | None = None) -> torch.Tensor:
    """Train the student len(plan) SGD steps from `start`, differentiably in images and lr.

    Args:
        student: the functional network.
        start: (P,) expert parameters theta*_t (not modified, no gradient).
        images: (S, C, H, W) synthetic images (requires grad).
        labels: (S,) long labels.
        lr: scalar learnable student learning rate.
        plan: the steps' minibatches and draws (`student_plan`); empty returns `start`.
        recompute: keep only the N parameter vectors and recompute each step's graph in
            the backward pass (`_RecomputedUnroll`); False keeps all N graphs (the reference).
        soft: optional (S', K) learnable logits of the first S' rows (`step_loss`); the
            gradient reaches them as it reaches the images.

    Returns:
        (P,) theta_hat_{t+N}.
    """
    if not plan:
        return start.detach()
    if recompute:
        return _RecomputedUnroll.apply(start.detach(), images, lr, soft, student, labels, plan)
    params = start.detach().requires_grad_(True)  # (P,) leaf: grad of CE w.r.t. it below
    for idx, draw in plan:
        # create_graph: the update must stay differentiable w.r.t. images, lr and soft labels.
        grad = _step_gradient(student, params, images[idx], idx, labels, soft, draw, create_graph=True)
        params = params - lr * grad  # (P,)
    return params


class _RecomputedUnroll(torch.autograd.Function):
    """theta_N = unroll(theta_0, images, lr) with a backward pass of one step's memory.

    Step k: theta_{k+1} = theta_k - lr * g_k, g_k = grad of CE(theta_k, x_k). Going back
    with a = dL/dtheta_{k+1}, one double-backward through the recomputed step gives
        dL/dlr     += -a . g_k
        dL/dx_k    += -lr * (a . dg_k/dx_k)
        dL/dsoft   += -lr * (a . dg_k/dsoft)   (soft labels, when learned)
        dL/dtheta_k = a - lr * (H_k a)
    which is exactly what autograd computes through the full graph.
    """

    @staticmethod
    def forward(ctx, start, images, lr, soft, student, labels, plan):
        thetas, params = [], start
        for idx, draw in plan:
            thetas.append(params)  # (P,) each; N of them is the whole memory cost
            with torch.enable_grad():
                leaf = params.detach().requires_grad_(True)
                grad = _step_gradient(student, leaf, images[idx], idx, labels, soft, draw, create_graph=False)
            params = params - lr * grad
        ctx.thetas, ctx.student, ctx.labels, ctx.plan = thetas, student, labels, plan
        ctx.soft = soft is not None
        ctx.save_for_backward(images, lr, *([soft] if soft is not None else []))
        return params

    @staticmethod
    def backward(ctx, adjoint):
        images, lr, *soft = ctx.saved_tensors
        soft = soft[0].detach().requires_grad_(True) if ctx.soft else None  # (S', K)
        grad_images, grad_lr = torch.zeros_like(images), torch.zeros_like(lr)
        grad_soft = torch.zeros_like(soft) if soft is not None else None
        for (idx, draw), theta in zip(reversed(ctx.plan), reversed(ctx.thetas)):
            with torch.enable_grad():
                params = theta.detach().requires_grad_(True)
                x = images[idx].detach().requires_grad_(True)  # (B, C, H, W)
                grad = _step_gradient(ctx.student, params, x, idx, ctx.labels, soft, draw, create_graph=True)
                grad_lr -= (adjoint * grad.detach()).sum()
                inputs = (params, x) if soft is None else (params, x, soft)
                hessian_adjoint, grad_x, *grad_y = torch.autograd.grad(grad, inputs, adjoint)
            grad_images.index_add_(0, idx, -lr.detach() * grad_x)
            if grad_soft is not None:
                grad_soft -= lr.detach() * grad_y[0]
            adjoint = adjoint - lr.detach() * hessian_adjoint
        ctx.thetas = ctx.plan = None
        return None, grad_images, grad_lr, grad_soft, None, None, None


def match_once(student: FunctionalStudent, trajectories: list[Trajectory], images: torch.Tensor,
               labels: torch.Tensor, lr: torch.Tensor, settings: PADSettings,
               keep_from: int, fixed: tuple[torch.Tensor, torch.Tensor] | None = None,
               soft: torch.Tensor | None = None) -> torch.Tensor:
    """One distillation iteration's loss: random expert, random start epoch, N student steps.

    Args:
        student: the functional network.
        trajectories: expert trajectories (flat vectors on the images' device).
        images: (S, C, H, W) synthetic images (requires grad).
        labels: (S,) long labels (local class indices).
        lr: scalar learnable student lr (requires grad).
        settings: syn_steps, expert_epochs, min/max_start_epoch, batch_syn, dsa.
        keep_from: first matched parameter index.
        fixed: optional (images, local labels) that join the synthetic set in the student's
            minibatches without receiving gradient (the context).
        soft: optional (S, K) learnable logits of the synthetic images (soft labels).
    """
    if fixed is not None:
        images, labels = torch.cat([images, fixed[0]]), torch.cat([labels, fixed[1]])
    trajectory = trajectories[int(torch.randint(len(trajectories), (1,)))]
    # Departure: inclusive upper end (reference: randint(min_start_epoch, max_start_epoch)).
    t = int(torch.randint(settings.min_start_epoch, settings.max_start_epoch + 1, (1,)))
    start, target = trajectory[t], trajectory[t + settings.expert_epochs]
    batch = settings.batch_syn or images.shape[0]
    dsa = settings.dsa_settings if settings.dsa else None
    plan = student_plan(images.shape[0], batch, settings.syn_steps, dsa, images.device)
    student_end = unroll_student(student, start, images, labels, lr, plan, settings.recompute_steps, soft)
    return trajectory_matching_loss(student_end, start, target, keep_from)


def distill(trajectories: list[Trajectory], images: torch.Tensor, labels: torch.Tensor,
            num_classes: int, settings: PADSettings, keep_from: int, progress: bool = True,
            stats: dict | None = None, fixed: tuple[torch.Tensor, torch.Tensor] | None = None,
            bounds: tuple[torch.Tensor, torch.Tensor] | None = None, desc: str = "PAD",
            network: nn.Module | None = None, soft: torch.Tensor | None = None,
            checkpoint: LoopCheckpoint | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Optimise synthetic images (and soft labels) by trajectory matching; never returns
    non-finite values.

    Every `progress_every` iterations (and at the end) the images, lr and loss are
    checked, which avoids a device sync per iteration. The first iteration is timed and
    what it and the whole update take is logged (`ccl.condense.announce_cost`). On NaN/inf the images, labels and
    lr go back to the last finite check, momentum is dropped, lr_img, lr_labels and lr_lr
    are halved and a warning says so; after `max_recoveries` such restarts the last finite
    values are returned. The learnable lr is kept at or above lr_init / 100: at zero or
    below, the student would climb its loss (the reference does not guard it and can diverge).

    Args:
        trajectories: expert trajectories on the images' device.
        images: (S, C, H, W) initial synthetic images (finite).
        labels: (S,) long local labels in [0, num_classes).
        num_classes: outputs of the student network.
        settings: PADSettings.
        keep_from: first matched parameter index.
        progress: show a tqdm bar with the loss.
        stats: filled with "iterations" (last finite check), "loss", "syn_lr",
            "recoveries", "stopped" (recoveries ran out) and "lr_img" (after lr_img_side).
        fixed: optional (images, local labels) in every student minibatch, not optimised.
        bounds: optional per-channel (low, high) the images are projected into after
            every step (`ccl.condense.bounds`); the reference leaves them unbounded.
        desc: the progress bar's label.
        network: the student's architecture (copied; default: `make_network(settings)`).
        soft: optional (S, num_classes) initial logits, learned with the images (soft labels).
        checkpoint: optional `LoopCheckpoint`: the iterations' progress (iteration, images,
            soft labels, student lr, optimiser momenta, the last finite values, restarts)
            is handed to it when a save is due, and taken back from it to resume.

    Returns:
        (S, C, H, W) optimised images and (S, num_classes) soft labels (None without), detached.
    """
    device = images.device
    network = (copy.deepcopy(network).to(device) if network is not None
               else make_network(settings, num_classes, tuple(images.shape[1:]), device))
    student = FunctionalStudent(network.train())
    images = images.detach().clone().requires_grad_(True)  # (S, C, H, W)
    learned = [images]
    if soft is not None:
        soft = soft.detach().clone().float().requires_grad_(True)  # (S, K)
        learned.append(soft)
    lr = torch.tensor(settings.lr_init, device=device).requires_grad_(True)  # learnable, scalar
    lr_floor = settings.lr_init / 100
    lr_img = image_lr(settings, tuple(images.shape[-2:]))

    def optimisers(scale: float) -> list[torch.optim.SGD]:
        # MTT: plain SGD with momentum 0.5 on the pixels and the student lr; the labels
        # with their own rate and momentum (the reference's optimizer_y).
        built = [torch.optim.SGD([images], lr=lr_img * scale, momentum=0.5),
                 torch.optim.SGD([lr], lr=settings.lr_lr * scale, momentum=0.5)]
        if soft is not None:
            built.append(torch.optim.SGD([soft], lr=settings.lr_labels * scale, momentum=settings.labels_momentum))
        return built

    steppers = optimisers(1.0)
    last_finite, last_lr = [t.detach().clone() for t in learned], settings.lr_init
    info = {"iterations": 0, "loss": float("nan"), "syn_lr": settings.lr_init, "recoveries": 0,
            "stopped": False, "lr_img": lr_img}
    start = 0
    saved = checkpoint.resume() if checkpoint is not None else None
    if saved is not None:
        problem = progress_problem(saved, settings.loop, images, settings.iterations)
        if problem is None and len(saved.get("learned", ())) != len(learned):
            problem = "it holds other learned tensors (soft labels on or off)"
        if problem:
            raise ValueError(f"the saved PAD progress does not fit this condensation: {problem}")
        info, start, last_lr = dict(saved["info"]), saved["iteration"], saved["last_lr"]
        with torch.no_grad():
            for t, value in zip(learned, saved["learned"]):
                t.copy_(value)
            lr.fill_(saved["lr"])
        last_finite = [t.to(device) for t in saved["last_finite"]]
        steppers = optimisers(0.5 ** info["recoveries"])  # as the last restart left them
        for opt, state in zip(steppers, saved["optimisers"]):
            opt.load_state_dict(state)
        for name, buffer in student.module.named_buffers():  # BatchNorm's running statistics
            buffer.copy_(saved["buffers"][name])
    bar = tqdm(range(start, settings.iterations), initial=start, total=settings.iterations, desc=desc,
               disable=not progress, leave=False)
    began = now(device)
    for it in bar:
        loss = match_once(student, trajectories, images, labels, lr, settings, keep_from, fixed, soft)
        for opt in steppers:
            opt.zero_grad(set_to_none=True)
        loss.backward()  # frees the unrolled graph
        for opt in steppers:
            opt.step()
        with torch.no_grad():
            lr.clamp_(min=lr_floor)
        if bounds is not None:
            project_(images, bounds)  # a no-op on NaN, which the check below catches
        if it == start:  # a large learner's iteration takes minutes: say what the update will take
            announce_cost(desc, now(device) - began, settings.iterations - start)
        if (it + 1) % settings.progress_every == 0 or it + 1 == settings.iterations:
            value = float(loss.detach())
            if all(torch.isfinite(t).all() for t in learned) and torch.isfinite(lr) and math.isfinite(value):
                last_finite, last_lr = [t.detach().clone() for t in learned], float(lr.detach())
                info.update(iterations=it + 1, loss=value, syn_lr=last_lr)
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{last_lr:.4g}")
            elif info["recoveries"] == settings.max_recoveries:
                warnings.warn(f"PAD: non-finite loss or images at iteration {it + 1} after "
                              f"{info['recoveries']} restarts; returning the images of iteration "
                              f"{info['iterations']}. Lower lr_img or lr_lr.", RuntimeWarning, stacklevel=3)
                info["stopped"] = True
                break
            else:
                info["recoveries"] += 1
                scale = 0.5 ** info["recoveries"]
                with torch.no_grad():
                    for t, good in zip(learned, last_finite):
                        t.copy_(good)
                    lr.fill_(last_lr)
                steppers = optimisers(scale)  # fresh: no momentum from the diverged steps
                warnings.warn(f"PAD: non-finite loss or images at iteration {it + 1} (loss {value}); "
                              f"restarting from iteration {info['iterations']} with lr_img "
                              f"{lr_img * scale:g} and lr_lr {settings.lr_lr * scale:g} "
                              f"(restart {info['recoveries']} of {settings.max_recoveries})",
                              RuntimeWarning, stacklevel=3)
        if checkpoint is not None and it + 1 < settings.iterations and checkpoint.due():
            checkpoint.save({"loop": settings.loop, "iteration": it + 1, "images": images.detach(),
                             "learned": [t.detach() for t in learned], "lr": float(lr.detach()),
                             "optimisers": [opt.state_dict() for opt in steppers], "last_finite": last_finite,
                             "last_lr": last_lr, "info": info, "buffers": dict(student.module.named_buffers())})
    bar.close()
    if stats is not None:
        stats.update(info)
    return last_finite[0], (last_finite[1] if soft is not None else None)


# --- condense: the ccl.condense contract ---------------------------------------------------

def init_synthetic(real: torch.Tensor, labels: torch.Tensor, budget: dict[int, int],
                   kind: str, preferred: torch.Tensor | None = None) -> torch.Tensor:
    """Initial synthetic images grouped by class in budget order, on real's device.

    "real" / "correct": random distinct real images of the class (repeated permutations
    when the budget exceeds the class's count), drawn first from the `preferred` ones;
    "noise": standard normal (the normalised space).

    Args:
        real: (N, C, H, W) real images.
        labels: (N,) long labels.
        budget: {class: images}.
        kind: one of INITS.
        preferred: optional (N,) bool mask of images to draw first (e.g. correctly
            classified); the rest of a class fills up when too few are preferred.
    """
    parts = []
    for c, count in budget.items():
        if kind == "noise":
            parts.append(torch.randn(count, *real.shape[1:], device=real.device))
            continue
        in_class = labels == c  # (N,)
        pools = [in_class] if preferred is None else [in_class & preferred, in_class & ~preferred]
        picked = torch.cat([idx[torch.randperm(idx.numel(), device=real.device)]
                            for idx in (torch.nonzero(m).flatten() for m in pools)])  # (n_c,)
        repeats = -(-count // picked.numel())  # ceil
        picked = torch.cat([picked] + [picked[torch.randperm(picked.numel(), device=real.device)]
                                       for _ in range(repeats - 1)])
        parts.append(real[picked[:count]])
    return torch.cat(parts).float()  # (sum(budget), C, H, W)


@torch.no_grad()
def classified_correctly(trajectory: Trajectory, real: torch.Tensor, labels: torch.Tensor,
                         num_classes: int, settings: PADSettings, batch: int = 1024) -> torch.Tensor:
    """(N,) bool: which real images the expert's final network (theta*_E) gets right."""
    network = FunctionalStudent(make_network(settings, num_classes, tuple(real.shape[1:]), real.device))
    network.module.eval()
    predictions = torch.cat([network(trajectory[-1], x).argmax(1) for x in real.split(batch)])  # (N,)
    return predictions == labels


def _check_inputs(real: torch.Tensor, labels: torch.Tensor, budget: dict[int, int],
                  init: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    if real.dim() != 4 or labels.shape != real.shape[:1]:
        raise ValueError(f"expected real (N, C, H, W) and labels (N,), got {tuple(real.shape)} "
                         f"and {tuple(labels.shape)}")
    if not budget or any(n < 1 for n in budget.values()):
        raise ValueError(f"budget must give every class at least one image, got {budget}")
    present = set(torch.unique(labels).tolist())
    missing = [c for c in budget if c not in present]
    if missing:
        raise ValueError(f"classes {missing} are in the budget but have no real images")
    if init is not None:
        expected = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in budget.items()])
        images, init_labels = init
        if images.shape != (expected.numel(), *real.shape[1:]) or \
                not torch.equal(init_labels.detach().cpu().long(), expected):
            raise ValueError("init images must match the budget: "
                             f"{expected.numel()} images of shape {tuple(real.shape[1:])} grouped "
                             "by class in budget order, with matching labels")
        if not torch.isfinite(images).all():
            raise ValueError("init images contain NaN or inf")


def _check_context(context: tuple[torch.Tensor, torch.Tensor], classes: list[int],
                   shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = context
    if images.dim() != 4 or images.shape[1:] != shape or labels.shape != images.shape[:1] or not len(labels):
        raise ValueError(f"context must be (M, {', '.join(map(str, shape))}) images with (M,) labels, M >= 1; "
                         f"got {tuple(images.shape)} and {tuple(labels.shape)}")
    overlap = sorted(set(labels.unique().tolist()) & set(classes))
    if overlap:
        raise ValueError(f"context classes {overlap} are also in the budget")
    if not torch.isfinite(images).all():
        raise ValueError("context images contain NaN or inf")
    return images, labels.long()


def condense(real: torch.Tensor, labels: torch.Tensor, budget: dict[int, int],
             device: torch.device | str, settings: PADSettings = PADSettings(), *,
             init: tuple[torch.Tensor, torch.Tensor] | None = None, progress: bool = True,
             stats: dict | None = None,
             context: tuple[torch.Tensor, torch.Tensor] | None = None,
             trajectory: LearnerTrajectory | None = None, checkpoint: LoopCheckpoint | None = None,
             experts: list[Trajectory] | None = None) -> Condensed:
    """Condense `real` into `budget` images per class with PAD (or MTT, see `mtt_settings`).

    Phases: EL2N scoring (only with the scheduler on), expert training on the given real
    data, trajectory matching. Networks see the budget's classes, relabelled 0..K-1 in
    budget order, then the context's classes (if any) as K..K+K'-1.

    Args:
        real: (N, C, H, W) normalised real images of the classes to condense; any device.
            Images of classes outside `budget` are ignored.
        labels: (N,) long labels of `real`.
        budget: {class: number of synthetic images}, e.g. {3: 34, 7: 33}.
        device: where the work happens and the result lives.
        settings: PADSettings.
        init: optional (images, labels) to start from, matching `budget`.
        progress: show a progress bar with the loss.
        stats: optional dict filled with phase times in seconds ("score_s", "experts_s",
            "match_s"), the resolved "alpha", "context_images" and `distill`'s entries.
        context: optional (images, labels) of classes outside the budget, e.g. a replay
            memory's old classes: they join the experts' and scorers' data (repeated to
            the real classes' mean count) and every student minibatch, and are not
            optimised or returned.
        trajectory: with `settings.expert == "learner"`, the learner's trajectory to match
            instead of trained experts (`match_learner`).
        checkpoint: optional `LoopCheckpoint` of the matching iterations (`distill`); the
            scoring and the experts are trained again on a resume, from the same draws.
        experts: trajectories trained earlier (`train_experts` on these real images, their
            classes relabelled 0..K-1 in budget order, under these settings), e.g. read
            from a cache: no scoring and no expert training then. Each needs at least
            max_start_epoch + expert_epochs + 1 vectors (a prefix, `train_experts(epochs=)`,
            will do; soft labels and init "correct" then read its last vector).

    Returns:
        a `Condensed`: images (sum(budget), C, H, W) float32 on `device`, grouped by class
        in budget order, their (sum(budget),) long labels and, with `soft_labels`, the
        learned logits over the networks' classes (budget, then context classes).
    """
    _check_inputs(real, labels, budget, init)
    classes = list(budget)
    if context is not None:
        context_x, context_y = _check_context(context, classes, real.shape[1:])
    real, labels = real.to(device), labels.to(device)
    finite = torch.isfinite(real).flatten(1).all(1)  # (N,) one NaN pixel would poison the experts
    if not finite.all():
        warnings.warn(f"PAD: ignoring {int((~finite).sum())} real images containing NaN or inf",
                      RuntimeWarning, stacklevel=2)
    keep = torch.isin(labels, torch.tensor(classes, device=device)) & finite  # (N,)
    real, labels = real[keep].float(), labels[keep]  # (N', C, H, W), (N',)
    if set(torch.unique(labels).tolist()) != set(classes):
        raise ValueError("some budget classes have no finite real images")
    if settings.expert == "learner":
        if trajectory is None:
            raise ValueError("PADSettings.expert = 'learner' matches the replay learner's trajectory "
                             "(ccl run); pass trajectory=, or use expert = 'trained'")
        return match_learner(real, labels, budget, device, settings, trajectory, init=init,
                             progress=progress, stats=stats, context=context, checkpoint=checkpoint)
    class_ids = torch.tensor(classes, device=device)  # (K,) original ids, budget order
    # Context classes follow the budget's in the networks' outputs: K .. K+K'-1.
    all_ids = class_ids if context is None else torch.cat([class_ids, context_y.unique().to(device)])
    to_local = torch.full((int(all_ids.max()) + 1,), -1, dtype=torch.long, device=device)
    to_local[all_ids] = torch.arange(len(all_ids), device=device)
    local_labels = to_local[labels]  # (N',) in [0, K)
    num_classes = len(all_ids)
    fixed = None
    train_x, train_y = real, local_labels  # the experts' and scorers' data
    if context is not None:
        fixed = (context_x.to(device).float(), to_local[context_y.to(device)])
        # Repeated to the real classes' mean count: a class of 50 memory images beside
        # classes of 1,000 real ones would barely move the experts.
        repeats = max(1, round(len(real) / len(classes) * (len(all_ids) - len(classes)) / len(context_x)))
        train_x = torch.cat([real, fixed[0].repeat(repeats, 1, 1, 1)])
        train_y = torch.cat([local_labels, fixed[1].repeat(repeats)])
    batch = expert_batch(settings, len(train_x))  # the experts' minibatch on this set
    expert_steps = settings.expert_epochs * math.ceil(len(train_x) / batch)
    if settings.syn_steps > 2 * expert_steps:
        # Seen on a GPU: N 80 against M 3 epochs of 8 steps (1,000 images per class)
        # swung the loss between 0.9 and 2.5 and left images that held nothing.
        warnings.warn(f"PAD: the student takes syn_steps={settings.syn_steps} steps to cover "
                      f"{expert_steps} expert steps (expert_epochs={settings.expert_epochs} on "
                      f"{len(train_x)} images); matching is ill-posed when N is over twice that: "
                      "lower syn_steps or raise expert_epochs", RuntimeWarning, stacklevel=2)
    timings = {"score_s": 0.0, "experts_s": 0.0, "match_s": 0.0}

    if experts is None:
        began = now(device)
        order = None
        if settings.scheduler:
            scores = el2n_scores(train_x, train_y, num_classes, device, settings)  # (N',)
            order = order_by_difficulty(scores, train_y)
        timings["score_s"] = now(device) - began

        began = now(device)
        trajectories = train_experts(train_x, train_y, num_classes, device, settings, order)
        timings["experts_s"] = now(device) - began
    else:
        trajectories = _given_experts(experts, settings, num_classes, tuple(real.shape[1:]), device)

    local_budget = {k: budget[c] for k, c in enumerate(classes)}
    syn_labels = torch.cat([torch.full((n,), k, dtype=torch.long, device=device)
                            for k, n in local_budget.items()])  # (S,) local
    if init is not None:
        images = init[0].detach().to(device).float()
    else:
        correct = (classified_correctly(trajectories[0], real, local_labels, num_classes, settings)
                   if settings.init == "correct" else None)
        kind = "real" if settings.init == "herding" else settings.init  # no learner here
        images = init_synthetic(real, local_labels, local_budget, kind, correct)
    alpha = resolve_alpha(settings, budget)
    keep_from = deep_parameter_start(trajectories[0][0].numel(), alpha)

    began = now(device)
    info: dict = {}
    bounds = channel_range(real)
    images = project_(images.clone(), bounds)
    out_labels = class_ids[syn_labels]  # (S,) original classes
    network = make_network(settings, num_classes, tuple(real.shape[1:]), device)
    soft = initial_soft_labels(network, trajectories[0][-1], images) if settings.soft_labels else None
    images, soft = distill(trajectories, images, syn_labels, num_classes, settings, keep_from, progress, info,
                           fixed, bounds, desc=f"PAD classes {classes}", network=network, soft=soft,
                           checkpoint=checkpoint)
    timings["match_s"] = now(device) - began

    if stats is not None:
        stats.update(timings, alpha=alpha, keep_from=keep_from, expert_batch=batch,
                     depth=len(network.blocks),
                     context_images=0 if context is None else len(context_x), **info)
    return Condensed(images, out_labels, soft, all_ids if soft is not None else None)


def _given_experts(experts: list[Trajectory], settings: PADSettings, num_classes: int,
                   shape: tuple[int, ...], device: torch.device | str) -> list[Trajectory]:
    """`condense`'s experts= on `device`, or ValueError where they cannot be these settings'
    networks on these classes, or are too short for the segments matching draws."""
    with torch.random.fork_rng(devices=[]):  # counting builds a network: its init draws nothing of the run's
        size = parameter_count(settings, num_classes, shape)
    needed = settings.max_start_epoch + settings.expert_epochs + 1
    if not experts:
        raise ValueError("experts= is empty: pass trajectories, or None to train them")
    for trajectory in experts:
        if len(trajectory) < needed or any(v.shape != (size,) for v in trajectory):
            got = tuple(trajectory[0].shape) if len(trajectory) else ()
            raise ValueError(f"an expert of {len(trajectory)} vectors of {got} does not fit: "
                             f"these settings and {num_classes} classes need at least {needed} vectors of ({size},)")
    return [[v.to(device).float() for v in trajectory] for trajectory in experts]


@torch.no_grad()
def initial_soft_labels(network: nn.Module, theta: torch.Tensor, images: torch.Tensor,
                        batch: int = 1024) -> torch.Tensor:
    """(S, K) logits of `network` with flat parameters `theta` on `images` (eval mode):
    where soft labels start (the reference: the first expert's final network)."""
    student = FunctionalStudent(copy.deepcopy(network))
    student.module.eval()
    return torch.cat([student(theta, x) for x in images.split(batch)]).float()


def match_learner(real: torch.Tensor, labels: torch.Tensor, budget: dict[int, int],
                  device: torch.device | str, settings: PADSettings, trajectory: LearnerTrajectory, *,
                  init: tuple[torch.Tensor, torch.Tensor] | None = None, progress: bool = True,
                  stats: dict | None = None, context: tuple[torch.Tensor, torch.Tensor] | None = None,
                  checkpoint: LoopCheckpoint | None = None) -> Condensed:
    """PAD against the learner's own trajectory (`settings.expert == "learner"`), called by
    `condense` once it has checked the inputs and kept the budget classes' finite real
    images (on `device`).

    The student is the learner's architecture with its labels (all its outputs, no
    relabelling); it starts at a learner snapshot theta_t and takes `syn_steps` steps on
    the synthetic images together with `context` (the memory's old images, fixed, as
    the learner's minibatches mixed stream and memory), and is compared with the
    snapshot `expert_epochs` epochs later, over the deep parameters (PAD's filter 2).
    The start epoch stays within [min_start_epoch, max_start_epoch] as far as the
    trajectory reaches: early segments carry what the learner learns first (PAD's
    filter 1 chooses the experts' data by difficulty; the learner's data is the stream
    as it came, so only the choice of segment carries over). Soft labels start as the
    learner's logits at its last snapshot (the network the images are matched against).
    """
    snapshots = [theta.to(device) for theta in trajectory.snapshots]
    epochs = len(snapshots) - 1
    if epochs < 1:
        raise ValueError(f"the learner trajectory needs at least two snapshots, got {len(snapshots)}")
    ahead = min(settings.expert_epochs, epochs)
    latest = min(settings.max_start_epoch, epochs - ahead)
    run = dataclasses.replace(settings, expert_train_epochs=epochs, expert_epochs=ahead,
                              max_start_epoch=latest, min_start_epoch=min(settings.min_start_epoch, latest))
    run = dataclasses.replace(run, lr_init=trajectory.student_lr(run))
    num_classes = _outputs(trajectory.network)
    if max(budget) >= num_classes:
        raise ValueError(f"the learner has {num_classes} outputs; budget classes {sorted(budget)} exceed them")
    syn_labels = torch.cat([torch.full((n,), c, dtype=torch.long, device=device) for c, n in budget.items()])
    images = (init[0].detach().to(device).float() if init is not None
              else init_synthetic(real, labels, budget, "real" if settings.init == "herding" else settings.init))
    fixed = None
    if context is not None:
        fixed = (context[0].to(device).float(), context[1].to(device).long())
    alpha = resolve_alpha(settings, budget)
    keep_from = deep_parameter_start(snapshots[0].numel(), alpha)
    began, info = now(device), {}
    bounds = channel_range(real)
    images = project_(images.clone(), bounds)
    soft = initial_soft_labels(trajectory.network, snapshots[-1], images) if settings.soft_labels else None
    columns = torch.arange(num_classes, device=device)
    images, soft = distill([snapshots], images, syn_labels, num_classes, run, keep_from, progress, info, fixed,
                           bounds, desc=f"PAD (learner) classes {list(budget)}", network=trajectory.network,
                           soft=soft, checkpoint=checkpoint)
    if stats is not None:
        stats.update(score_s=0.0, experts_s=0.0, match_s=now(device) - began, alpha=alpha, keep_from=keep_from,
                     context_images=0 if fixed is None else len(fixed[1]), expert="learner",
                     segment=[run.min_start_epoch, run.max_start_epoch, ahead], lr_init=run.lr_init, **info)
    return Condensed(images, syn_labels, soft, columns if soft is not None else None)


def _outputs(network: nn.Module) -> int:
    last = [m for m in network.modules() if isinstance(m, nn.Linear)][-1]
    return last.out_features


__all__ = ["PADSettings", "initial_soft_labels", "step_loss", "LearnerTrajectory", "flat_parameters", "match_learner", "mtt_settings", "condense", "default_alpha", "resolve_alpha",
           "deep_parameter_start", "deep_parameter_mask", "trajectory_matching_loss",
           "FunctionalStudent", "image_lr", "student_plan", "unroll_student", "match_once", "distill", "init_synthetic",
           "classified_correctly",
           "REFERENCE_ALPHA"]
