"""How memory images are stored: float32, float16, or uint8 pixels.

Synthetic images are float; real exemplars fit in uint8. Storing both as uint8
(quantising synthetic images after condensing) lets memories be compared at equal
bytes, not only at equal image counts.
"""
from __future__ import annotations

import torch


class MemoryCodec:
    """Encode normalised float images for storage and decode them for training.

    Args:
        dtype: torch.float32, torch.float16 or torch.uint8.
        mean, std: the data set's per-channel normalisation (uint8 stores pixels).
    """

    def __init__(self, dtype: torch.dtype, mean: tuple[float, ...], std: tuple[float, ...]):
        self.dtype, self.mean, self.std = dtype, mean, std

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        view = (1, -1, 1, 1)
        return (torch.tensor(self.mean, device=x.device).view(view),
                torch.tensor(self.std, device=x.device).view(view))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype != torch.uint8:
            return x.to(self.dtype)
        mean, std = self._stats(x)
        return ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)  # (N, C, H, W) pixels

    def decode(self, stored: torch.Tensor) -> torch.Tensor:
        if self.dtype != torch.uint8:
            return stored.float()
        mean, std = self._stats(stored)
        return (stored.float() / 255 - mean) / std
