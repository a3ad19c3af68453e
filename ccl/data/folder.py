"""Class-folder ("ImageFolder") data sets: `<root>/<split>/<class>/<image>`.

Class indices are the sorted folder names, as torchvision's ImageFolder does.
Unreadable files and images of another size than most are skipped with one warning
that counts them; a class left without images is an error.
"""
from __future__ import annotations

import collections
import functools
import logging
from pathlib import Path

import numpy as np

from ccl.data.cache import cached_arrays, fingerprint
from ccl.data.images import ImageSet, channel_stats
from ccl.errors import CclError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def class_folders(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(file, label) for every file in the class folders, in sorted order."""
    items = []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            raise CclError(f"{split_dir}: class folder {name!r} is missing")
        items += [(f, label) for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")]
    return items


def _warn(message: str, notes: list[str] | None) -> None:
    """Log a warning about the data, and keep it in `notes` (the cache stores them)."""
    log.warning("%s", message)
    if notes is not None:
        notes.append(message)


def decode_images(items: list[tuple[Path, int]], classes: list[str], where: Path,
                  mode: str | None = None, notes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode files to uint8 (N, H, W, C) and labels, skipping what cannot be used.

    Args:
        items: (file, label) pairs.
        classes: class names, for messages.
        where: the folder, for messages.
        mode: PIL mode to convert to ("RGB", "L"); None picks "L" when every readable
            image is greyscale, else "RGB".
        notes: the warnings given are also appended here (the cache keeps them, so that
            a later run that reads the cache gives them again).
    """
    warn = functools.partial(_warn, notes=notes)

    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    decoded, unreadable = [], 0
    for f, label in tqdm(items, desc=f"decoding {where.name}", unit="img", leave=False,
                         disable=None if len(items) >= 2000 else True):  # None: only on a terminal
        try:
            with Image.open(f) as im:
                im.load()
                decoded.append((im, label))
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            unreadable += 1
    if mode is None:
        grey = sum(im.mode in ("L", "1") for im, _ in decoded)
        mode = "L" if decoded and grey == len(decoded) else "RGB"
        if 0 < grey < len(decoded):
            warn(f"{where}: {len(decoded) - grey} colour image(s) among {grey} greyscale ones: "
                 "all are read as RGB (3 channels)")
    sizes = collections.Counter(im.size for im, _ in decoded)
    if not sizes:
        raise CclError(f"{where}: no readable images")
    size = sizes.most_common(1)[0][0]
    xs, ys = [], []
    for im, label in decoded:
        if im.size == size:
            arr = np.asarray(im.convert(mode), dtype=np.uint8)
            xs.append(arr[..., None] if arr.ndim == 2 else arr)
            ys.append(label)
    wrong_size = len(decoded) - len(xs)
    if unreadable or wrong_size:
        warn(f"{where}: skipped {unreadable} unreadable file(s) and {wrong_size} image(s) not of size "
             f"{size[0]}x{size[1]}")
    y = np.asarray(ys, dtype=np.int64)
    empty = [classes[c] for c in range(len(classes)) if not (y == c).any()]
    if empty:
        raise CclError(f"{where}: class {empty[0]!r} has no usable images")
    return np.stack(xs), y


def has_split_layout(root: Path) -> bool:
    """True when `root` holds train/<class>/ and test/<class>/ folders."""
    return all((root / s).is_dir() and class_folders(root / s) for s in ("train", "test"))


TEST_FRACTION = 0.2  # for a folder without train/ and test/, split off this much per class
SPLIT_SEED = 0


def load_folder(data_dir: Path, name: str = "folder") -> ImageSet:
    """Any class-folder data set: `<dir>/{train,test}/<class>/*`, or `<dir>/<class>/*`
    split per class into train and test with a fixed seed."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise CclError(f"{root}: data folder not found (expected <dir>/<class>/<image> "
                       f"or <dir>/train/<class>/ and <dir>/test/<class>/)")
    split = has_split_layout(root)
    top = root / "train" if split else root
    classes = [p.name for p in class_folders(top)]
    if len(classes) < 2:
        raise CclError(f"{top}: need at least 2 class folders, found {len(classes)}")
    if split:
        test_only = sorted({p.name for p in class_folders(root / "test")} - set(classes))
        if test_only:
            log.warning("%s: class folder(s) %s exist only under test/ and are ignored (classes are "
                        "train/'s folders)", root, ", ".join(test_only))
    listing = {s: list_images(root / s, classes) for s in ("train", "test")} if split else {"all": list_images(root, classes)}
    files = [f for items in listing.values() for f, _ in items]

    def decode() -> dict[str, np.ndarray]:
        notes: list[str] = []
        arrays = _decode(notes)
        return {**arrays, "warnings": np.array(notes, dtype=str)}

    def _decode(notes: list[str]) -> dict[str, np.ndarray]:
        if split:
            (tx, ty), (vx, vy) = (decode_images(listing[s], classes, root / s, notes=notes) for s in ("train", "test"))
            if {tx.shape[-1], vx.shape[-1]} == {1, 3}:  # one split all greyscale, the other not
                grey = "train" if tx.shape[-1] == 1 else "test"
                _warn(f"{root}: {grey}/ is all greyscale, the other split is not: all are read as RGB (3 channels)",
                      notes)
                tx, vx = (np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a for a in (tx, vx))  # as PIL's L -> RGB
            if tx.shape[1:] != vx.shape[1:]:
                raise CclError(f"{root}: train images are {tx.shape[1:]}, test images {vx.shape[1:]}")
        else:
            x, y = decode_images(listing["all"], classes, root, notes=notes)
            rng = np.random.default_rng(SPLIT_SEED)
            test = np.zeros(len(y), dtype=bool)
            for c in range(len(classes)):
                idx = np.flatnonzero(y == c)
                if len(idx) < 2:
                    raise CclError(f"{root / classes[c]}: need at least 2 images to split train/test")
                n_test = max(1, int(round(TEST_FRACTION * len(idx))))
                test[rng.choice(idx, n_test, replace=False)] = True
            tx, ty, vx, vy = x[~test], y[~test], x[test], y[test]
        return dict(train_x=tx, train_y=ty, test_x=vx, test_y=vy)

    arrays = cached_arrays(root, name, fingerprint(files), decode)
    mean, std = channel_stats(arrays["train_x"])
    return ImageSet(name, classes, arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"], mean, std)
