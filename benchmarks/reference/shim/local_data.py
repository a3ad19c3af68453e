"""Feeds the reference scripts the CIFAR-10 that ccl reads (JPEG class folders,
ccl's decoded cache), as their get_dataset would: ToTensor + Normalize with the same
constants, in torchvision's CIFAR-10 training order (the order PAD's data_indices files
index), and saves their synthetic sets in ccl's set format.

Environment:
  REF_DATA_DIR          data folder (the one holding cifar10/)
  REF_TRAIN_PER_CLASS   keep the first N training images of each class (tiny checks; as
                        `ccl condense --train-per-class N`); unset = all 5,000
  REF_TEST_PER_CLASS    keep the first N test images of each class (tiny checks)
"""
import os
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
GRAND = HERE.parent / "pad" / "data_indices" / "CIFAR10_GraNd.pt"  # (10, 5000) original indices by class
MEAN = [0.4914, 0.4822, 0.4465]
STD = [0.2023, 0.1994, 0.2010]


def _env_int(name):
    value = os.environ.get(name)
    return int(value) if value else None


def original_order_labels():
    """(50000,) labels of torchvision's CIFAR-10 training order, read off PAD's GraNd file
    (row c holds the original indices of class c); its first ten, 6 9 9 4 1 1 2 7 8 3, are
    CIFAR-10's data_batch_1."""
    rows = torch.load(GRAND)
    labels = torch.full((rows.numel(),), -1, dtype=torch.long)
    for c, row in enumerate(rows):
        labels[row] = c
    assert (labels >= 0).all()
    return labels


_CACHE = {}


def cifar10():
    """Normalised train (in the original CIFAR-10 order, subset by REF_TRAIN_PER_CLASS) and
    test tensors, and `original_index` (the original index of every kept training image)."""
    if _CACHE:
        return _CACHE
    from ccl.data import load_dataset
    data = load_dataset("cifar10", os.environ["REF_DATA_DIR"])
    assert list(data.mean) == MEAN and list(data.std) == STD, (data.mean, data.std)
    # ccl's class folders: class c's files in name order, NNNN = rank within the class in
    # the original order (the folders were written from the original data set).
    by_class = [np.flatnonzero(data.train_y == c) for c in range(10)]
    orig_labels = original_order_labels()
    rank = torch.zeros_like(orig_labels)
    for c in range(10):
        idx = torch.nonzero(orig_labels == c).flatten()  # ascending original indices
        rank[idx] = torch.arange(len(idx))
    keep_n = _env_int("REF_TRAIN_PER_CLASS")
    original_index = torch.arange(len(orig_labels))
    if keep_n:
        original_index = original_index[rank < keep_n]
    ccl_index = np.array([by_class[int(orig_labels[i])][int(rank[i])] for i in original_index])
    train_x = data.normalise(data.train_x[ccl_index])
    train_y = torch.from_numpy(data.train_y[ccl_index]).long()
    assert torch.equal(train_y, orig_labels[original_index])
    test = data.first_per_class(None, _env_int("REF_TEST_PER_CLASS"))
    _CACHE.update(train_x=train_x, train_y=train_y, test_x=data.normalise(test.test_x),
                  test_y=torch.from_numpy(test.test_y).long(), classes=list(data.classes),
                  original_index=original_index, rank=rank[original_index])
    return _CACHE


class _Cifar(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 with ToTensor+Normalize returns: (image tensor, int label)."""

    def __init__(self, x, y, classes):
        self.x, self.y, self.classes, self.targets = x, y, classes, y.tolist()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def _datasets():
    d = cifar10()
    return _Cifar(d["train_x"], d["train_y"], d["classes"]), _Cifar(d["test_x"], d["test_y"], d["classes"])


def get_dataset_datadam(dataset, data_path, args):
    """DataDAM utils.get_dataset for CIFAR10 without ZCA."""
    assert dataset == "CIFAR10" and not args.zca, "the shim serves CIFAR10 without ZCA"
    dst_train, dst_test = _datasets()
    testloader = torch.utils.data.DataLoader(dst_test, batch_size=256, shuffle=False, num_workers=0)
    return 3, (32, 32), 10, dst_train.classes, MEAN, STD, dst_train, dst_test, testloader, None


def get_dataset_pad(dataset, data_path, batch_size=1, subset="imagenette", args=None, baseline=False):
    """PAD utils_gsam / utils_baseline get_dataset for CIFAR10 without ZCA (num_workers 0
    for the test loader instead of 2: two cores here)."""
    assert dataset == "CIFAR10" and not args.zca and not baseline, "the shim serves CIFAR10 without ZCA"
    dst_train, dst_test = _datasets()
    testloader = torch.utils.data.DataLoader(dst_test, batch_size=128, shuffle=False, num_workers=0)
    return (3, (32, 32), 10, dst_train.classes, MEAN, STD, dst_train, dst_test, testloader, None,
            {x: x for x in range(10)}, None)


def subset_sort_file(out):
    """PAD's CIFAR10_GraNd order restricted to the REF_TRAIN_PER_CLASS subset, as indices
    into the subset (for tiny checks of buffer_CL.py)."""
    d = cifar10()
    position = {int(o): i for i, o in enumerate(d["original_index"])}
    rows = torch.load(GRAND)
    sub = torch.stack([torch.tensor([position[int(i)] for i in row if int(i) in position]) for row in rows])
    torch.save(sub, out)
    return sub.shape


def save_set(path, images, labels, method, ipc, soft_labels=None, **extra):
    """A set file `ccl evaluate` reads (the keys `ccl condense` writes)."""
    from ccl.io import save_torch
    images = images.detach().cpu().float()
    labels = labels.detach().cpu().long()
    obj = {"images": images, "labels": labels, "dataset": "cifar10", "method": method, "ipc": ipc,
           "seed": -1, "mean": tuple(MEAN), "std": tuple(STD), "class_names": cifar10()["classes"],
           "train_per_class": _env_int("REF_TRAIN_PER_CLASS"), "reference": True, **extra}
    if soft_labels is not None:
        obj["soft_labels"] = soft_labels.detach().cpu().float()
    save_torch(Path(path), obj)
    print(f"saved {len(images)} images -> {path}", flush=True)
