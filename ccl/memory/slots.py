"""How a fixed budget of images is shared among the classes seen so far."""
from __future__ import annotations


def slots_per_class(mem_size: int, classes: list[int]) -> dict[int, int]:
    """`mem_size // n` slots per class; the remainder goes one each to the classes that
    arrived first (deterministic, and the oldest classes lose images last).

    Args:
        mem_size: total images in memory.
        classes: classes seen so far, in arrival order.
    """
    n = len(classes)
    if n == 0:
        return {}
    if mem_size < n:
        raise ValueError(f"a memory of {mem_size} images cannot hold {n} classes")
    base, extra = divmod(mem_size, n)
    return {c: base + (i < extra) for i, c in enumerate(classes)}


def future_shares(mem_size: int, classes: list[int], upcoming: list[list[int]]) -> dict[int, list[int]]:
    """The slots each of `classes` will have after each of the `upcoming` arrivals.

    Args:
        mem_size: total images in memory.
        classes: classes in memory now, in arrival order.
        upcoming: the classes of each later experience, in arrival order.

    Returns:
        {class: [share after the next arrival, after the one after, ...]} (non-increasing).
    """
    shares: dict[int, list[int]] = {c: [] for c in classes}
    seen = list(classes)
    for group in upcoming:
        seen += [c for c in group if c not in seen]
        for c, k in slots_per_class(mem_size, seen).items():
            if c in shares:
                shares[c].append(k)
    return shares
