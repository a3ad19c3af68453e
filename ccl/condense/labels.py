"""Learned soft labels for fixed images: labels learned by a meta-gradient.

As in "Flexible Dataset Distillation: Learn Labels Instead of Images" (Bohdal et al.,
2020) and Data-Distill-Net (Liao et al., 2025), which learns the labels of a replay
buffer: the images stay as they are and only their label logits Z move, so that a network
trained on (images, softmax(Z)) does well on real data:

    inner:  theta_{t+1} = theta_t - inner_lr * grad_theta mean_i CE(f(theta_t, x_i), softmax(Z_i))
            for t < inner_steps, from the network's own weights theta_0;
    outer:  L(Z) = class-balanced mean CE(f(theta_T, x), y) over a batch of real images,
            minimised over Z with Adam, a fresh real batch every step.

Departures from the papers: the network is the one the labels are for (the replay
learner, at the end of an experience), not a population of networks trained from scratch;
the inner loop is a step or two from its weights rather than a whole training run; and
the outer batch may hold stand-ins for classes whose real data is gone (the memory's rows
of old classes with their stored labels). Every class of the outer batch weighs the same,
as every class does in the average accuracy the learner is judged on.

Pure torch: the network runs through `torch.func.functional_call` on copies of its
parameters and buffers, so the network itself is never changed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


@dataclass(frozen=True)
class LabelSettings:
    """How the label logits are learned (a few dozen cheap outer steps by default)."""

    steps: int = 30             # outer (Adam) steps on the logits
    lr: float = 0.1             # Adam's rate on the logits (units of logit per step, at most)
    inner_steps: int = 1        # differentiable SGD steps of the network on the rows
    inner_lr: float = 0.1       # their rate; with one step Adam makes it nearly irrelevant
    # Real images per outer step, drawn afresh from all classes given (all where they are
    # fewer). Its forward and backward passes are most of the cost: at 128 and 30 steps
    # about 4,000 sample-passes, more than one digits experience's training (2,880).
    real_batch: int = 128
    # "learner": start from the network's logits on the images (herding-soft's labels);
    # "hard": from the images' labels, log-odds `hard_logit` above every other class.
    init: str = "learner"
    hard_logit: float = 5.0     # 5: softmax puts about 0.94 on the label with 10 outputs

    def __post_init__(self) -> None:
        for name in ("steps", "inner_steps", "real_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LabelSettings.{name} must be an integer >= 1, got {value!r}")
        if not (self.lr > 0 and self.inner_lr > 0):
            raise ValueError(f"LabelSettings.lr and inner_lr must be > 0, got {self.lr} and {self.inner_lr}")
        if self.init not in ("learner", "hard"):
            raise ValueError(f"LabelSettings.init must be 'learner' or 'hard', got {self.init!r}")
        if not self.hard_logit > 0:
            raise ValueError(f"LabelSettings.hard_logit must be > 0, got {self.hard_logit}")

    def work(self, rows: int, context: int) -> float:
        """A rough cost in sample-passes of the network (one image forward and backward):
        every outer step passes the rows forward and backward twice (the inner gradient,
        then the meta-gradient through it) per inner step, and the real batch and context
        forward and backward once."""
        return self.steps * (2 * self.inner_steps * rows + self.real_batch + context)


def initial_logits(network: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   settings: LabelSettings) -> torch.Tensor:
    """(S, K) starting label logits, K the network's outputs: its logits on the images
    (eval mode) or the hard labels as logits (`settings.init`)."""
    with torch.no_grad():
        was_training = network.training
        network.eval()
        outputs = network(images[:1]).shape[1]
        if settings.init == "learner":
            logits = torch.cat([network(images[i:i + 512]) for i in range(0, len(images), 512)])
        network.train(was_training)
    if settings.init == "hard":
        return F.one_hot(labels, outputs).float() * settings.hard_logit  # (S, K)
    return logits.float()


def balanced_cross_entropy(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over the classes present of each class's mean cross-entropy: every class of
    the batch weighs the same, however many of its rows the batch holds."""
    loss = F.cross_entropy(output, labels, reduction="none")  # (B,)
    _, position, counts = labels.unique(return_inverse=True, return_counts=True)
    return (loss / counts[position].to(loss.dtype)).sum() / len(counts)


@torch.enable_grad()  # the inner steps differentiate, whatever the caller's mode
def outer_loss(network: nn.Module, logits: torch.Tensor, images: torch.Tensor, real: torch.Tensor,
               real_labels: torch.Tensor, settings: LabelSettings) -> torch.Tensor:
    """L(Z): the network after `inner_steps` SGD steps on (images, softmax(logits)),
    judged by class-balanced cross-entropy on (real, real_labels). Differentiable in
    `logits`; the network keeps its own weights.

    Args:
        network: the network the labels are for; inner steps in train mode, the outer
            loss in eval mode (as it is tested), its buffers copied so neither changes it.
        logits: (S, K) label logits of the images.
        images: (S, C, H, W) the images the labels belong to.
        real: (B, C, H, W) real images (or stand-ins) to do well on.
        real_labels: (B,) their labels.
    """
    was_training = network.training
    params = {name: p.detach().requires_grad_(True) for name, p in network.named_parameters()}
    buffers = {name: b.clone() for name, b in network.named_buffers()}  # BatchNorm's stay untouched
    target = logits.softmax(1)  # (S, K)
    try:
        network.train()
        for _ in range(settings.inner_steps):
            output = functional_call(network, (params, buffers), (images,))  # (S, K)
            inner = -(target * output.log_softmax(1)).sum(1).mean()  # soft cross-entropy, as replay trains
            grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
            params = {name: p - settings.inner_lr * g for (name, p), g in zip(params.items(), grads)}
        network.eval()
        output = functional_call(network, (params, buffers), (real,))  # (B, K)
        return balanced_cross_entropy(output, real_labels)
    finally:
        network.train(was_training)


@torch.enable_grad()
def learn_labels(images: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, real_labels: torch.Tensor,
                 network: nn.Module, settings: LabelSettings,
                 context: tuple[torch.Tensor, torch.Tensor] | None = None,
                 stats: dict | None = None) -> torch.Tensor:
    """Soft label logits for fixed `images`, learned so that training `network` on them
    lowers its loss on real data (see the module docstring).

    Args:
        images: (S, C, H, W) the images to label, on the network's device.
        labels: (S,) their hard labels (the "hard" start).
        real: (N, C, H, W) real images of the classes being labelled.
        real_labels: (N,) their labels.
        network: the network the labels are for (the replay learner); left unchanged.
        settings: steps, rates, start.
        context: optional (images, labels) standing in for classes without real data
            (the memory's old-class rows): all of them join every outer batch.
        stats: optional dict; gets "labels_seconds" and "labels_outer_loss" (first and
            last outer step's loss).

    Returns:
        (S, K) float32 label logits over the network's K outputs.
    """
    start = time.perf_counter()
    images = images.detach()
    logits = initial_logits(network, images, labels, settings).requires_grad_(True)  # (S, K)
    optimizer = torch.optim.Adam([logits], lr=settings.lr)
    losses = []
    for _ in range(settings.steps):
        batch, batch_labels = real, real_labels  # (B, C, H, W), (B,): all, where they fit
        if len(real) > settings.real_batch:
            pick = torch.randperm(len(real), device=real.device)[:settings.real_batch]
            batch, batch_labels = real[pick], real_labels[pick]
        if context is not None and len(context[1]):
            batch, batch_labels = torch.cat([batch, context[0]]), torch.cat([batch_labels, context[1]])
        loss = outer_loss(network, logits, images, batch, batch_labels, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=[logits])
        optimizer.step()
        losses.append(loss.detach())
    if stats is not None:
        stats["labels_seconds"] = time.perf_counter() - start
        stats["labels_outer_loss"] = [float(losses[0]), float(losses[-1])]
    return logits.detach()
