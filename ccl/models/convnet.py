"""ConvNet-D: the standard backbone of dataset distillation (DC, DM, MTT, DataDAM, PAD).

Each block is Conv3x3(width) -> norm -> ReLU -> AvgPool2d(2); a linear classifier reads
the flattened output of the last block. For 32x32 RGB, depth 3, width 128 and 10 classes
this has 320,010 parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from ccl.names import NORMS


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        # "instancenorm" in the reference code is GroupNorm with one group per channel:
        # unlike nn.InstanceNorm2d it has an affine transform by default.
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


def fitting_depth(image_size: int, depth: int) -> int:
    """`depth` blocks, or fewer where the images are too small for them: no block starts
    on a map under 4x4 (at least one block).

    A block on a 2x2 map (the third block on 8x8 digits) normalises each channel over 4
    values and pools them to 1x1: trained with plain SGD at the experts' rate, such a
    ConvNet stayed at chance on split-digits for 8 epochs, where two blocks reached 0.77.
    32x32 and 28x28 images keep 3 blocks.

    Args:
        image_size: input height and width.
        depth: the blocks asked for.
    """
    blocks, size = 0, image_size
    while blocks < depth and size >= 4:
        blocks, size = blocks + 1, size // 2
    return max(1, blocks)


class ConvNet(nn.Module):
    """ConvNet of `depth` blocks for `channels` x `image_size` x `image_size` inputs.

    Args:
        num_classes: outputs of the classifier.
        channels: input channels (3 for RGB, 1 for greyscale).
        image_size: input height and width; each block halves it (floor), never below 1.
        width: channels of every convolution.
        depth: number of blocks.
        norm: "instance" (GroupNorm per channel), "batch" or "none".
    """

    def __init__(self, num_classes: int, channels: int = 3, image_size: int = 32,
                 width: int = 128, depth: int = 3, norm: str = "instance"):
        super().__init__()
        blocks, size = [], image_size
        for i in range(depth):
            pool = size >= 2  # tiny inputs (8x8 digits) cannot be halved forever
            blocks.append(nn.Sequential(
                nn.Conv2d(channels if i == 0 else width, width, 3, padding=1),
                _norm(norm, width),
                nn.ReLU(inplace=False),
                nn.AvgPool2d(2) if pool else nn.Identity(),
            ))
            size = size // 2 if pool else size
        self.blocks = nn.ModuleList(blocks)
        self.embedding_dim = width * size * size
        self.classifier = nn.Linear(self.embedding_dim, num_classes)

    def block_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Output of every block (after ReLU and pooling), input to output."""
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features before the classifier: (N, embedding_dim)."""
        for block in self.blocks:
            x = block(x)
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
