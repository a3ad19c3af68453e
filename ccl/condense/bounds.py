"""Keeping synthetic images valid pixels: the per-channel range of the real images.

The papers leave synthetic images unbounded; then uint8 storage cannot hold them and a
picture of them is not what a learner trains on. Projecting onto the real images' range
after every step (projected gradient descent) keeps them within 0..1 in pixel units
without the method knowing the data set's normalisation.
"""
from __future__ import annotations

import torch


def channel_range(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, 1, 1) per-channel minimum and maximum of (N, C, H, W) images."""
    per_channel = images.transpose(0, 1).flatten(1)  # (C, N*H*W)
    view = (1, -1, 1, 1)
    return per_channel.amin(1).view(view), per_channel.amax(1).view(view)


@torch.no_grad()
def project_(images: torch.Tensor, bounds: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Clamp (N, C, H, W) `images` in place into per-channel `bounds`; returns them."""
    low, high = bounds
    return torch.minimum(torch.maximum(images, low), high, out=images)
