"""Standalone evaluation of a synthetic set: train fresh ConvNets on it alone, test them.

The protocol of the condensation papers (DC, DM, DataDAM, PAD): SGD with momentum 0.9, weight decay
5e-4, lr 0.01 divided by 10 half-way, batches of up to 256, DSA on every batch; the test
accuracy of the FINAL network is reported as mean and standard deviation over several
fresh networks. Unlike some reference code, nothing is selected by test accuracy.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ccl.condense.dsa import DSASettings, augment
from ccl.models.convnet import NORMS, ConvNet, fitting_depth
from ccl.training import soft_cross_entropy


@dataclass(frozen=True)
class EvalSettings:
    """Training of the evaluation networks; defaults follow the papers except `epochs`."""

    epochs: int = 300           # papers 1,000-1,800; 300 is enough to rank sets on CPU
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch: int = 256            # the whole set when it is smaller
    dsa: bool = True            # fresh (non-siamese) DSA on every training batch
    dsa_settings: DSASettings = field(default_factory=DSASettings)
    networks: int = 3           # fresh networks to average over (papers 5-10)
    width: int = 128
    depth: int = 3              # fewer on small images (`fitting_depth`: 2 on 8x8 digits)
    norm: str = "instance"      # small sets cannot estimate BatchNorm statistics well
    test_batch: int = 1024      # images per test forward pass

    def __post_init__(self) -> None:
        for name in ("epochs", "batch", "networks", "width", "depth", "test_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"EvalSettings.{name} must be an integer >= 1, got {value!r}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("EvalSettings needs lr > 0, weight_decay >= 0 and momentum in [0, 1), "
                             f"got {self.lr}, {self.weight_decay}, {self.momentum}")
        if self.norm not in NORMS:
            raise ValueError(f"EvalSettings.norm must be one of {', '.join(NORMS)}, "
                             f"got {self.norm!r}")


def evaluate_synthetic(images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor,
                       test_labels: torch.Tensor, num_classes: int, device: torch.device | str,
                       settings: EvalSettings = EvalSettings(), progress: bool = True,
                       soft_labels: torch.Tensor | None = None) -> dict:
    """Train `settings.networks` fresh ConvNets on (images, labels) only; test each.

    Args:
        images: (M, C, S, S) training images (e.g. a synthetic set), normalised.
        labels: (M,) long labels in [0, num_classes).
        test_images: (T, C, S, S) test images, on any device (moved batch by batch).
        test_labels: (T,) long test labels.
        num_classes: outputs of the networks.
        device: where the networks train.
        settings: EvalSettings.
        progress: show a progress bar over networks and epochs.
        soft_labels: optional (M, num_classes) logits learned with the images: the
            networks train on cross-entropy to their softmax (as the PAD reference
            evaluates its sets) instead of the hard labels.

    Returns:
        {"accuracies": [final test accuracy of each network, in [0, 1]],
         "mean": mean, "std": population standard deviation (as numpy's, which papers use)}.
    """
    device = torch.device(device)
    if images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be (M, C, S, S), got {tuple(images.shape)}")
    if images.shape[1:] != test_images.shape[1:]:
        raise ValueError(f"train images {tuple(images.shape[1:])} and test images "
                         f"{tuple(test_images.shape[1:])} differ in shape")
    images = images.detach().to(device=device, dtype=torch.float32)
    labels = labels.to(device=device, dtype=torch.long)
    if soft_labels is not None:
        soft_labels = soft_labels.to(device=device, dtype=torch.float32)

    accuracies = []
    bar = tqdm(total=settings.networks * settings.epochs, disable=not progress, desc="evaluate",
               leave=False)
    try:
        for _ in range(settings.networks):
            net = ConvNet(num_classes, channels=images.shape[1], image_size=images.shape[-1],
                          width=settings.width, depth=fitting_depth(images.shape[-1], settings.depth),
                          norm=settings.norm).to(device)
            train(net, images, labels, settings, on_epoch=lambda: bar.update(1), soft_labels=soft_labels)
            accuracies.append(accuracy(net, test_images, test_labels, settings.test_batch))
    finally:
        bar.close()
    return {"accuracies": accuracies, "mean": statistics.fmean(accuracies),
            "std": statistics.pstdev(accuracies)}


def train(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, settings: EvalSettings,
          on_epoch=None, soft_labels: torch.Tensor | None = None) -> None:
    """Train `net` on (images, labels) with the protocol's SGD schedule, without host syncs.

    Args:
        net: the network, on images' device.
        images: (M, C, H, W) training images.
        labels: (M,) long labels.
        settings: EvalSettings.
        on_epoch: optional callback after every epoch (progress).
        soft_labels: optional (M, K) logits: cross-entropy to their softmax instead.
    """
    optimizer = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=settings.momentum,
                                weight_decay=settings.weight_decay)
    # lr x 0.1 from half-way on. The reference rebuilds the optimiser there (dropping the
    # momentum buffer); here only the learning rate changes.
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [settings.epochs // 2], gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    m = images.shape[0]
    for _ in range(settings.epochs):
        order = torch.randperm(m, device=images.device)  # (M,)
        for start in range(0, m, settings.batch):
            index = order[start:start + settings.batch]
            x = images[index]  # (B, C, H, W)
            if settings.dsa:
                x = augment(x, settings.dsa_settings)
            if soft_labels is None:
                loss = loss_fn(net(x), labels[index])
            else:
                loss = soft_cross_entropy(net(x), labels[index], soft_labels[index]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        if on_epoch is not None:
            on_epoch()


@torch.no_grad()
def accuracy(net: nn.Module, test_images: torch.Tensor, test_labels: torch.Tensor,
                  batch: int = 1024) -> float:
    """Top-1 accuracy of `net` (in eval mode) on the test set, batch by batch.

    Args:
        net: the trained network.
        test_images: (T, C, H, W) images on any device.
        test_labels: (T,) long labels.
        batch: images per forward pass.
    """
    device = next(net.parameters()).device
    net.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, test_images.shape[0], batch):
        x = test_images[start:start + batch].to(device=device, dtype=torch.float32)
        y = test_labels[start:start + batch].to(device=device)
        correct += (net(x).argmax(dim=1) == y).sum()
    return int(correct) / max(test_images.shape[0], 1)
