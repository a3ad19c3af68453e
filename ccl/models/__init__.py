"""Networks: the ConvNet backbone of dataset distillation and a ResNet-18 learner."""
from __future__ import annotations

from torch import nn

from ccl.errors import CclError
from ccl.models.convnet import NORMS, ConvNet
from ccl.models.resnet import ResNet18
from ccl.names import LEARNERS


def build_learner(name: str, num_classes: int, shape: tuple[int, int, int],
                  width: int = 128, depth: int = 3, norm: str = "instance") -> nn.Module:
    """The learner network for images of `shape` (C, H, W)."""
    channels, height, _ = shape
    if name == "convnet":
        return ConvNet(num_classes, channels, height, width, depth, norm)
    if name == "resnet18":
        return ResNet18(num_classes, channels)
    raise CclError(f"unknown model {name!r}; choose one of: {', '.join(LEARNERS)}")


__all__ = ["ConvNet", "ResNet18", "NORMS", "LEARNERS", "build_learner"]
