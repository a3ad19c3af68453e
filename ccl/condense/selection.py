"""Selecting real exemplars: random and iCaRL herding. Both return a priority order,
so that keeping the first k of a class is the right way to shrink its slots."""
from __future__ import annotations

import torch


def herding_order(features: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """iCaRL herding (Rebuffi et al. 2017, Alg. 4): greedily pick the sample that brings
    the running mean of the picked ones closest to the class mean.

    Args:
        features: (n, d) features of one class's samples.
        k: how many to pick (default all n).

    Returns:
        (k,) indices into `features`, in the order picked.
    """
    n = features.shape[0]
    k = n if k is None else min(k, n)
    f = torch.nn.functional.normalize(features, dim=1)    # (n, d), iCaRL normalises features
    target = f.mean(0)                                    # (d,)
    picked = torch.zeros(n, dtype=torch.bool, device=f.device)
    order = torch.empty(k, dtype=torch.long, device=f.device)
    running = torch.zeros_like(target)                    # sum of picked features
    for i in range(k):
        # distance of the mean after adding each candidate: ||target - (running + f_j)/(i+1)||
        dist = (target - (running + f) / (i + 1)).norm(dim=1)  # (n,)
        dist[picked] = float("inf")
        j = dist.argmin()
        order[i] = j
        picked[j] = True
        running += f[j]
    return order


def random_order(n: int, k: int | None = None, device: torch.device | None = None) -> torch.Tensor:
    """k indices drawn without replacement from n, in random order (global torch RNG)."""
    k = n if k is None else min(k, n)
    return torch.randperm(n, device=device)[:k]
