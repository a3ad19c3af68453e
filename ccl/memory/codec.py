"""How memory images are stored: float32, float16, or uint8 pixels, at full or reduced size.

Synthetic images are float; real exemplars fit in uint8. Storing both as uint8
(quantising synthetic images after condensing) lets memories be compared at equal
bytes, not only at equal image counts. A downscale of f stores each image at 1/f of its
side (area-averaged) and upsamples it bilinearly when it is replayed, so f^2 times as
many images fit in the same bytes (IDC's multi-formation, Kim et al. 2022).
"""
from __future__ import annotations

import torch

from ccl.data.images import grow, shrink


class MemoryCodec:
    """Encode normalised float images for storage and decode them for training.

    Args:
        dtype: torch.float32, torch.float16 or torch.uint8.
        mean, std: the data set's per-channel normalisation (uint8 stores pixels).
        downscale: store images at 1/downscale of their height and width.
    """

    def __init__(self, dtype: torch.dtype, mean: tuple[float, ...], std: tuple[float, ...],
                 downscale: int = 1):
        if downscale < 1:
            raise ValueError(f"downscale must be at least 1, got {downscale}")
        self.dtype, self.mean, self.std, self.downscale = dtype, mean, std, downscale

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view = (1, -1, 1, 1)
        return (torch.tensor(self.mean, device=x.device).view(view),
                torch.tensor(self.std, device=x.device).view(view))

    def encode(self, x: torch.Tensor, shrunk: bool = False) -> torch.Tensor:
        """(N, C, H, W) normalised images -> (N, C, H/f, W/f) stored ones. `shrunk`: x is
        already at the stored size (a condenser that optimised the stored pixels)."""
        if not shrunk:
            x = shrink(x, self.downscale)
        if self.dtype != torch.uint8:
            return x.to(self.dtype)
        mean, std = self._stats(x)
        return ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)  # (N, C, h, w) pixels

    def decode(self, stored: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) stored images -> (N, C, h*f, w*f) normalised float32 ones."""
        if self.dtype != torch.uint8:
            x = stored.float()
        else:
            mean, std = self._stats(stored)
            x = (stored.float() / 255 - mean) / std
        return grow(x, self.downscale)
