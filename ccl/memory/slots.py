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
