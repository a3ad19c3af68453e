"""`ImageSet`: a data set held as uint8 arrays, the one shape every loader returns."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ImageSet:
    """Train and test images of one data set.

    Images are uint8 (N, H, W, C) arrays: a quarter of the bytes of float32, and the
    form the cache stores. `normalise` turns them into the float tensors models see.
    """
    name: str
    classes: list[str]
    train_x: np.ndarray  # (N, H, W, C) uint8
    train_y: np.ndarray  # (N,) int64
    test_x: np.ndarray   # (M, H, W, C) uint8
    test_y: np.ndarray   # (M,) int64
    mean: tuple[float, ...]  # per channel, in [0, 1] units
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, h, w, c = self.train_x.shape
        return c, h, w

    def normalise(self, x: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, C) -> float32 (N, C, H, W), standardised per channel."""
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return t.sub_(mean).div_(std).contiguous()

    def fingerprint(self) -> dict:
        """Per-class counts, image shape and a SHA-256 of every pixel and label: what a
        resumed run checks to know it trains on the data it started with."""
        digest = hashlib.sha256()
        for array in (self.train_x, self.train_y, self.test_x, self.test_y):
            digest.update(np.ascontiguousarray(array).tobytes())
        return {"train_per_class": np.bincount(self.train_y, minlength=self.num_classes).tolist(),
                "test_per_class": np.bincount(self.test_y, minlength=self.num_classes).tolist(),
                "shape": list(self.shape), "sha256": digest.hexdigest()}

    def first_per_class(self, n: int | None = None, test: int | None = None) -> "ImageSet":
        """Keep the first `n` training and `test` test images of every class (in data set
        order); None keeps all of them."""
        def first(y: np.ndarray, k: int | None) -> np.ndarray:
            if k is None:
                return np.arange(len(y))
            return np.sort(np.concatenate([np.flatnonzero(y == c)[:k] for c in range(self.num_classes)]))
        train, held = first(self.train_y, n), first(self.test_y, test)
        return ImageSet(self.name, self.classes, self.train_x[train], self.train_y[train],
                        self.test_x[held], self.test_y[held], self.mean, self.std)


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, H, W, C) images, in [0, 1] units."""
    f = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255
    std = np.maximum(f.std(0), 1e-3)  # a constant channel must not divide by zero
    return tuple(float(v) for v in f.mean(0)), tuple(float(v) for v in std)


def denormalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """float (N, C, H, W) in normalised space -> [0, 1] (for image grids)."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp(0, 1)
