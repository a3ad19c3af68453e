"""Data sets (as uint8 arrays) and the scenario definitions that split them into streams."""
from __future__ import annotations

import os
from pathlib import Path

from ccl.data.cache import user_cache_dir
from ccl.data.images import ImageSet
from ccl.errors import CclError
from ccl.registry import Registry

DATASETS: Registry = Registry("data set")


def default_data_dir() -> Path:
    """$CCL_DATA_DIR, else the user cache folder."""
    env = os.environ.get("CCL_DATA_DIR")
    return Path(env).expanduser() if env else user_cache_dir() / "data"


@DATASETS.register("digits", "scikit-learn's 1,797 8x8 handwritten digits (ships with scikit-learn)")
def _digits(data_dir: Path | None, download: bool) -> ImageSet:
    from ccl.data.digits import load_digits
    return load_digits()


@DATASETS.register("cifar10", "CIFAR-10: 60,000 32x32 RGB images, 10 classes")
def _cifar10(data_dir: Path | None, download: bool) -> ImageSet:
    from ccl.data.cifar import CIFAR10, load_cifar
    return load_cifar(CIFAR10, data_dir or default_data_dir(), download)


@DATASETS.register("cifar100", "CIFAR-100: 60,000 32x32 RGB images, 100 classes")
def _cifar100(data_dir: Path | None, download: bool) -> ImageSet:
    from ccl.data.cifar import CIFAR100, load_cifar
    return load_cifar(CIFAR100, data_dir or default_data_dir(), download)


@DATASETS.register("folder", "any class-folder data set (--data-dir required)")
def _folder(data_dir: Path | None, download: bool) -> ImageSet:
    from ccl.data.folder import load_folder
    if data_dir is None:
        raise CclError("this scenario reads a class-folder data set: give --data-dir")
    return load_folder(data_dir)


def load_dataset(name: str, data_dir: Path | None = None, download: bool = False) -> ImageSet:
    return DATASETS.get(name).value(Path(data_dir) if data_dir else None, download)


__all__ = ["DATASETS", "ImageSet", "default_data_dir", "load_dataset"]
