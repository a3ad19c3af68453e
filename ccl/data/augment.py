"""The field's CIFAR augmentation for stream samples, on a whole minibatch on its device."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip(x: torch.Tensor, padding: int = 4, fill: torch.Tensor | None = None) -> torch.Tensor:
    """Each image padded by `padding` pixels, cropped back to its size at a random offset,
    and flipped left-right with probability 1/2 (torchvision's RandomCrop(32, padding=4)
    and RandomHorizontalFlip, as mammoth and Avalanche's baselines train CIFAR).

    Args:
        x: (B, C, H, W) images.
        padding: pixels added on every side before cropping.
        fill: (C,) value of the padding, e.g. black in normalised units (-mean / std);
            default 0.

    Returns:
        (B, C, H, W) on x's device, drawn from the global generator.
    """
    b, c, h, w = x.shape
    base = torch.zeros(1, c, 1, 1, device=x.device) if fill is None else fill.view(1, c, 1, 1).to(x)
    padded = F.pad(x - base, (padding,) * 4) + base  # (B, C, H + 2p, W + 2p)
    top = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device)
    left = torch.randint(0, 2 * padding + 1, (b, 1), device=x.device)
    rows = top + torch.arange(h, device=x.device)  # (B, H)
    cols = left + torch.arange(w, device=x.device)  # (B, W)
    flip = torch.rand(b, 1, device=x.device) < 0.5
    cols = torch.where(flip, cols.flip(1), cols)  # a flipped image reads its columns backwards
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()
