"""Decode once: decoded uint8 arrays are cached as one .npz per data set and source.

The cache sits beside the data when that folder is writable (so it travels with it),
else in the user cache folder. Its name carries a fingerprint of the source files, so
changed data is decoded again instead of served stale.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from ccl.errors import CclError
from ccl.io import open_regular, ram_bytes

log = logging.getLogger(__name__)


def user_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ccl"


def fingerprint(files: list[Path]) -> str:
    """Hash of the files' names, sizes and modification times (cheap, no reading)."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _cache_folders(root: Path) -> list[Path]:
    """Where a data set's cache may be: a real folder inside the data folder (a link there
    would take ccl's writes and deletions outside it), then ccl's own cache folder."""
    beside = root / ".ccl-cache"
    inside = not beside.is_symlink() and os.path.realpath(beside).startswith(os.path.realpath(root) + os.sep)
    return [beside, user_cache_dir() / "arrays"] if inside else [user_cache_dir() / "arrays"]


def _cache_path(root: Path, name: str, key: str) -> Path:
    for folder in _cache_folders(root):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder / f"{name}-{key}.npz"
        except OSError:
            continue
    return Path(tempfile.gettempdir()) / f"ccl-{name}-{key}.npz"


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.0f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:,.0f} KiB"


def shape_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """What is wrong with a data set's arrays (classes, {train,test}_{x,y}), or None."""
    missing = sorted({"classes", "train_x", "train_y", "test_x", "test_y"} - set(arrays))
    if missing:
        return f"{missing[0]} is missing"
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.dtype != np.uint8 or x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or y.dtype.kind not in "iu":
            return f"{split} images or labels have the wrong shape or type"
        if len(y) and (y.min() < 0 or y.max() >= len(arrays["classes"])):
            return f"{split} labels lie outside the {len(arrays['classes'])} classes"
    if arrays["train_x"].shape[1:] != arrays["test_x"].shape[1:]:
        return "train and test images differ in shape"
    return None


def cached_arrays(root: Path, name: str, key: str,
                  decode: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays from the cache for (root, name, key), or `decode()` and cache them."""
    for folder in _cache_folders(root):
        path = folder / f"{name}-{key}.npz"
        if path.exists():
            try:
                # allow_pickle stays False: a crafted cache runs nothing
                with open_regular(path, ram_bytes(), "data cache") as f, np.load(f) as z:
                    arrays = {k: z[k] for k in z.files}
                problem = shape_problem(arrays)
                if problem:
                    raise ValueError(problem)
                for message in arrays.pop("warnings", ()):  # what decoding warned about, every run
                    log.warning("%s", message)
                return arrays
            except (OSError, ValueError, zipfile.BadZipFile, EOFError, CclError) as e:
                log.warning("cache %s is unreadable (%s); decoding again", path, e)
                if path.is_file() and not path.is_symlink():
                    path.unlink(missing_ok=True)
    # Said before the silence of a first decoding (a bar counts the images on a terminal),
    # and where the result went: a few hundred MB beside the data should not surprise.
    log.info("decoding the images of %s (the first time only: later runs read a cache)", root)
    arrays = decode()  # may hold "warnings": messages it logged, given again on a cache hit
    path = _cache_path(root, name, key)
    tmp = None
    try:  # a new file of ccl's own (mkstemp: exclusive, no link followed), renamed into place
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        log.info("cached the decoded images in %s (%s)", path, _size(path.stat().st_size))
    except OSError as e:  # a read-only disk costs speed, never the run
        log.warning("could not write cache %s (%s)", path, e)
        if tmp:
            Path(tmp).unlink(missing_ok=True)
    arrays.pop("warnings", None)
    return arrays
