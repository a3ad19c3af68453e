"""Training utilities every layer above data and models shares: the run's device, its
seeding, a clock that waits for the device, fresh weights, and one epoch of SGD."""
from __future__ import annotations

import os
import random
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ccl.errors import CclError
from ccl.io import ram_bytes


def pick_device(name: str) -> torch.device:
    """The run's one device. A bare "cuda" gets its index (cuda:0), so that it compares
    equal to the device of the tensors placed on it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CclError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CclError(f"device {name!r} asked for, but torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device


def refuse_oversized(nbytes: int, what: str, device: torch.device) -> None:
    """A CclError when `nbytes` is more than the machine's memory (or `device`'s, on a GPU)
    holds: said before the allocation, not as the allocator's traceback after it."""
    holds = {"RAM": ram_bytes()}
    if device.type == "cuda":
        holds[str(device)] = torch.cuda.get_device_properties(device).total_memory
    for where, total in holds.items():
        if nbytes > total:
            raise CclError(f"{what} needs {nbytes / 2**30:,.1f} GiB, more than the {total / 2**30:,.1f} GiB "
                           f"of {where} this machine has")


def seed_everything(seed: int) -> None:
    """The one place randomness is seeded; everything below draws from these.

    Also asks for deterministic kernels: on CUDA, cuDNN's autotuner and atomic-add
    kernels (convolution backward, index_add_) otherwise make two runs of one seed
    differ. cuBLAS reads its workspace setting when it first starts, so it is set here,
    before any work. Ops without a deterministic kernel warn rather than fail.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def now(device: torch.device | str) -> float:
    """Wall clock after the device's queued work is done (CUDA runs asynchronously)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def reinitialise(net: nn.Module) -> None:
    """Fresh random weights in place (same distribution as constructing a new module)."""
    for module in net.modules():
        if module is not net and hasattr(module, "reset_parameters"):
            module.reset_parameters()


def sgd_epoch(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
              optimizer: torch.optim.Optimizer, batch: int,
              augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
    """One epoch of cross-entropy training over `images[indices]`, shuffled.

    Args:
        net: the network (put in train mode here).
        images: (N, C, H, W) images on the network's device.
        labels: (N,) long labels.
        indices: (K,) long indices of the samples of this epoch.
        optimizer: over net's parameters.
        batch: minibatch size (the last batch may be smaller).
        augment: a fresh augmentation of each minibatch, x -> x, or None.
    """
    net.train()
    perm = indices[torch.randperm(indices.numel(), device=indices.device)]  # (K,)
    for chunk in perm.split(batch):
        x, y = images[chunk], labels[chunk]  # (B, C, H, W), (B,)
        if augment is not None:
            x = augment(x)
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def soft_cross_entropy(output: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor | None,
                       temperature: float = 1.0) -> torch.Tensor:
    """(B,) per-row cross-entropy: to softmax(soft / temperature) where a row has a soft
    target (DATM's soft cross-entropy; a NaN row has none), else to the hard label.

    Args:
        output: (B, K) logits.
        labels: (B,) long hard labels.
        soft: (B, K) target logits, NaN rows where there is none; or None (all hard).
        temperature: divides the target logits (1: the reference's).
    """
    hard = F.cross_entropy(output, labels, reduction="none")  # (B,)
    if soft is None:
        return hard
    has = ~soft[:, 0].isnan()  # (B,)
    target = torch.nan_to_num(soft, nan=0.0).div(temperature).softmax(1)  # (B, K)
    return torch.where(has, -(target * output.log_softmax(1)).sum(1), hard)
