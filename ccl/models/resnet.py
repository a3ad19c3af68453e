"""ResNet-18 learner for small images (the usual CIFAR variant: 3x3 stem, no max-pool)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18


class ResNet18(nn.Module):
    """torchvision's ResNet-18 with a CIFAR stem, and `embed` like ConvNet's."""

    def __init__(self, num_classes: int, channels: int = 3):
        super().__init__()
        net = resnet18(num_classes=num_classes)
        # A 7x7 stride-2 stem and max-pool would shrink 32x32 inputs to 8x8 before the
        # first block; the CIFAR variant keeps full resolution there.
        net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        self.classifier = net.fc
        net.fc = nn.Identity()
        self.body = net
        self.embedding_dim = 512

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (N, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
