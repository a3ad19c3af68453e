"""Selecting real exemplars: random, iCaRL herding, and herding given synthetic rows
already in the set (a hybrid memory's). All return a priority order, so that keeping the
first k of a class is the right way to shrink its slots."""
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


def conditioned_herding_order(real: torch.Tensor, synthetic: torch.Tensor,
                               synthetic_at: torch.Tensor) -> torch.Tensor:
    """Herding of real samples given synthetic ones already in the set, as Hybrid Memory
    Replay selects real exemplars conditioned on its distilled ones (Kong et al. 2024,
    arXiv 2410.15372): the set is laid out in priority order, synthetic rows at the
    positions `synthetic_at` marks (in their own order), and at each other position the
    real sample is picked that brings the mean of everything so far, synthetic and real,
    closest to the class mean (iCaRL's criterion, `herding_order`). So the real rows cover
    what the synthetic rows before them miss, at every prefix.

    Args:
        real: (n, d) features of the class's real samples: the candidates, and the class
            mean is theirs.
        synthetic: (s, d) features of its synthetic samples, in priority order.
        synthetic_at: (k,) bool, True at the s positions of the synthetic rows; the other
            k - s positions take real samples (k - s <= n).

    Returns:
        (k - s,) indices into `real`, in the order of the real positions. With no synthetic
        row this is `herding_order(real, k)`.
    """
    n, s, k = real.shape[0], synthetic.shape[0], synthetic_at.shape[0]
    if int(synthetic_at.sum()) != s or k - s > n:
        raise ValueError(f"the layout has {int(synthetic_at.sum())} synthetic and {k - int(synthetic_at.sum())} "
                         f"real positions for {s} synthetic and {n} real samples")
    f = torch.nn.functional.normalize(real, dim=1)         # (n, d), normalised as iCaRL's
    g = torch.nn.functional.normalize(synthetic, dim=1)    # (s, d)
    target = f.mean(0)                                     # (d,) the real class mean
    picked = torch.zeros(n, dtype=torch.bool, device=f.device)
    order = torch.empty(k - s, dtype=torch.long, device=f.device)
    running = torch.zeros_like(target)                     # sum of the rows placed so far
    next_synthetic = next_real = 0
    for i, is_synthetic in enumerate(synthetic_at.tolist()):
        if is_synthetic:
            running += g[next_synthetic]
            next_synthetic += 1
            continue
        # the mean after placing each candidate here: (running + f_j) / (i + 1)
        dist = (target - (running + f) / (i + 1)).norm(dim=1)  # (n,)
        dist[picked] = float("inf")
        j = dist.argmin()
        order[next_real] = j
        picked[j] = True
        running += f[j]
        next_real += 1
    return order


def random_order(n: int, k: int | None = None, device: torch.device | None = None) -> torch.Tensor:
    """k indices drawn without replacement from n, in random order (global torch RNG)."""
    k = n if k is None else min(k, n)
    return torch.randperm(n, device=device)[:k]
