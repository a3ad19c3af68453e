"""CIFAR-10 and CIFAR-100 from a local folder, in either of two layouts.

- class folders: `<dir>/train/<class>/*` and `<dir>/test/<class>/*` (also under
  `<dir>/cifar10/` or `<dir>/cifar100/`): 32x32 RGB images in any format PIL reads, one
  folder a class (10 or 100 of them), class indices in sorted folder-name order;
- torchvision's pickles: `<dir>/cifar-10-batches-py/` or `<dir>/cifar-100-python/`, as the
  official tarball (`tarball`, https://www.cs.toronto.edu/~kriz/cifar.html) unpacks.

Only when neither is there, and only when asked (`--download`), does it ask torchvision
to download.
"""
from __future__ import annotations

import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ccl.data.cache import cached_arrays, fingerprint
from ccl.data.folder import class_folders, decode_images, has_split_layout, list_images
from ccl.data.images import ImageSet
from ccl.errors import CclError
from ccl.io import open_regular, ram_bytes


@dataclass(frozen=True)
class CifarSpec:
    name: str               # "cifar10"
    pickle_dir: str         # torchvision's folder name
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    meta_file: str
    names_key: bytes
    num_classes: int
    mean: tuple[float, float, float]  # the per-channel constants of the DC/DM/DataDAM/PAD code
    std: tuple[float, float, float]
    tarball: str            # the official python-version archive, which torchvision downloads


CIFAR10 = CifarSpec("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                    "test_batch", b"labels", "batches.meta", b"label_names", 10,
                    (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), "cifar-10-python.tar.gz")
CIFAR100 = CifarSpec("cifar100", "cifar-100-python", ("train",), "test", b"fine_labels", "meta",
                     b"fine_label_names", 100, (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762),
                     "cifar-100-python.tar.gz")


class _ArraysOnly(pickle.Unpickler):
    """Unpickles what torchvision's CIFAR files hold (dicts, lists, bytes, numpy arrays)
    and nothing else: any other global a file names is refused, so a crafted file in a
    data folder cannot run code (plain pickle.load would call whatever it names)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # protocol-2 pickles written by Python 3 store bytes this way

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a CIFAR file holds arrays and lists only")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open_regular(path, ram_bytes(), "CIFAR file", links=True) as f:  # a FIFO: refused, not waited on
            return _ArraysOnly(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise CclError(f"{path}: unreadable or corrupt CIFAR file ({e})") from None


def _from_pickles(folder: Path, spec: CifarSpec) -> dict[str, np.ndarray]:
    def load(names):
        parts = [_unpickle(folder / n) for n in names]
        x = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = np.concatenate([np.asarray(p[spec.label_key]) for p in parts]).astype(np.int64)
        return np.ascontiguousarray(x, dtype=np.uint8), y
    train_x, train_y = load(spec.train_files)
    test_x, test_y = load([spec.test_file])
    meta = _unpickle(folder / spec.meta_file)
    classes = np.asarray([n.decode() for n in meta[spec.names_key]])
    return dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, classes=classes)


def _from_class_folders(root: Path, spec: CifarSpec) -> dict[str, np.ndarray]:
    classes = [p.name for p in class_folders(root / "train")]
    if len(classes) != spec.num_classes:
        raise CclError(f"{root / 'train'}: expected {spec.num_classes} class folders, found {len(classes)}")
    out = {"classes": np.asarray(classes)}
    for split in ("train", "test"):
        x, y = decode_images(list_images(root / split, classes), classes, root / split, mode="RGB")
        if x.shape[1:] != (32, 32, 3):
            raise CclError(f"{root / split}: expected 32x32 RGB images, found {x.shape[2]}x{x.shape[1]}")
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    return out


def _find(data_dir: Path, spec: CifarSpec) -> tuple[str, Path] | None:
    for root in (data_dir, data_dir / spec.name):
        if root.is_dir() and has_split_layout(root):
            return "folders", root
    for folder in (data_dir / spec.pickle_dir, data_dir):
        if (folder / spec.test_file).is_file() and (folder / spec.meta_file).is_file():
            return "pickles", folder
    return None


def load_cifar(spec: CifarSpec, data_dir: Path, download: bool = False) -> ImageSet:
    """Load CIFAR from `data_dir` (either layout), downloading only when neither is there."""
    data_dir = Path(data_dir).expanduser()
    found = _find(data_dir, spec)
    tried = ""
    if found is None and download:
        found, tried = _download(spec, data_dir)
    if found is None:
        raise CclError(
            f"{spec.name} not found in {data_dir}: looked for class folders {data_dir}/train/<class>/ and "
            f"{data_dir}/test/<class>/ (or under {data_dir}/{spec.name}/) and torchvision's "
            f"{data_dir}/{spec.pickle_dir}/; {tried or 'nothing downloaded'}; pass --data-dir DIR "
            f"holding either (`tar -xzf {spec.tarball} -C DIR` makes the latter from the official "
            "archive), or --download to fetch it there with torchvision")
    layout, root = found
    if layout == "folders":
        files = [f for s in ("train", "test") for f, _ in list_images(root / s, [p.name for p in class_folders(root / s)])]
        arrays = cached_arrays(root, spec.name, fingerprint(files), lambda: _from_class_folders(root, spec))
    else:
        files = [root / n for n in (*spec.train_files, spec.test_file, spec.meta_file)]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise CclError(f"{missing[0]}: missing file of torchvision's CIFAR layout")
        arrays = cached_arrays(root, spec.name, fingerprint(files), lambda: _from_pickles(root, spec))
    return ImageSet(spec.name, [str(c) for c in arrays["classes"]], arrays["train_x"], arrays["train_y"],
                    arrays["test_x"], arrays["test_y"], spec.mean, spec.std)


def _download(spec: CifarSpec, data_dir: Path) -> tuple[tuple[str, Path] | None, str]:
    """(what _find gives after a torchvision download, or None; why it failed). A folder
    created for the download is removed again when nothing arrived."""
    import torchvision
    cls = torchvision.datasets.CIFAR10 if spec.name == "cifar10" else torchvision.datasets.CIFAR100
    created = not data_dir.exists()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        cls(str(data_dir), train=True, download=True)
    except Exception as e:  # no network, no disk space, a proxy: all mean "not available"
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        return None, f"a torchvision download failed ({type(e).__name__}: {reason})"
    return _find(data_dir, spec), ""
