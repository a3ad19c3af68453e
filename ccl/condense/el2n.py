"""EL2N difficulty scores (Paul et al., NeurIPS 2021), used by PAD to sort real samples.

    chi(x, y) = E_w || softmax(f(w, x)) - onehot(y) ||_2

the expectation over a few networks trained briefly on the data. A small score means the
networks already fit the sample (easy); mislabelled and atypical samples score high.

The score networks are trained like the experts (same network, SGD lr, batch and DSA),
so "easy" means easy for the training that the scheduler shapes. The reference PAD
repository ships precomputed orders (EL2N / GraNd files) instead of computing them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ccl.condense.dsa import augmenter
from ccl.condense.experts import ExpertSettings, expert_batch, make_network
from ccl.training import sgd_epoch


_EVAL_BATCH = 512  # scoring needs no graph, so larger batches than training are fine


@torch.no_grad()
def el2n_of_network(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    num_classes: int) -> torch.Tensor:
    """(N,) || softmax(f(x)) - onehot(y) ||_2 of one network, without augmentation.

    Args:
        net: a trained network (evaluated in eval mode).
        images: (N, C, H, W) on the network's device.
        labels: (N,) long labels.
        num_classes: width of the one-hot targets.
    """
    net.eval()
    scores = []
    for x, y in zip(images.split(_EVAL_BATCH), labels.split(_EVAL_BATCH)):
        probs = F.softmax(net(x), dim=1)  # (B, K)
        error = probs - F.one_hot(y, num_classes).to(probs.dtype)  # (B, K)
        scores.append(error.norm(dim=1))  # (B,)
    return torch.cat(scores)  # (N,)


def el2n_scores(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                device: torch.device | str, settings: ExpertSettings) -> torch.Tensor:
    """Mean EL2N over `settings.score_networks` networks trained `settings.score_epochs` epochs.

    Args:
        images: (N, C, H, W) real images (moved to `device`).
        labels: (N,) long labels in [0, num_classes).
        num_classes: outputs of the networks.
        device: where the networks train.
        settings: ExpertSettings (score_networks, score_epochs, expert_lr, expert_batch / expert_min_steps,
            dsa, network shape).

    Returns:
        (N,) float scores on `device`; larger is harder.
    """
    images, labels = images.to(device), labels.to(device)
    everything = torch.arange(images.shape[0], device=device)  # (N,)
    dsa = augmenter(settings.dsa_settings if settings.dsa else None)
    total = torch.zeros(images.shape[0], device=device)  # (N,)
    batch = expert_batch(settings, images.shape[0])
    for _ in range(settings.score_networks):
        net = make_network(settings, num_classes, tuple(images.shape[1:]), device)
        optimizer = torch.optim.SGD(net.parameters(), lr=settings.expert_lr)
        for _ in range(settings.score_epochs):
            sgd_epoch(net, images, labels, everything, optimizer, batch, dsa)
        total += el2n_of_network(net, images, labels, num_classes)
    return total / settings.score_networks  # (N,)


def order_by_difficulty(scores: torch.Tensor, labels: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per-class indices sorted easy to hard.

    Args:
        scores: (N,) difficulty scores (e.g. EL2N), larger is harder.
        labels: (N,) long labels.

    Returns:
        {class: (n_c,) long indices into the N samples, easiest first}, classes ascending.
        Ties keep the original order (stable sort), so the result is deterministic.
    """
    if scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} differ in shape")
    order = {}
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()  # (n_c,)
        ranks = torch.sort(scores[idx], stable=True).indices  # (n_c,)
        order[int(c)] = idx[ranks]
    return order
