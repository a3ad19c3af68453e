"""Buffer policies: which rows a memory keeps. No Avalanche here, and no storage: a policy
answers with rows, the memory's store writes there, and a new policy is one class and one
registry line (`ccl.memory.MEMORIES`).

Stream policies see the labels of a minibatch's samples and answer with the memory row
each takes: `ReservoirBuffer` and `ClassBalancedReservoirBuffer` over the whole stream
(they fill the rows in order while the memory is not full, row i the i-th sample offered,
so the filled rows are always the first min(seen, size)), and `StreamReservoir` for the
new classes' slots of a class-balanced memory while their experience streams. The
class-balanced memory's end-of-experience policy, `class_balanced_slots`, turns the old
rows and the new classes' rows into the memory's next rows.
"""
from __future__ import annotations

import torch

from ccl.memory.rows import Rows


class ReservoirBuffer:
    """A uniform sample of the whole stream (Vitter's algorithm R; the ER and DER papers'
    buffer, mammoth's `reservoir`), whatever the classes.

    Args:
        size: rows in memory.
    """

    def __init__(self, size: int):
        self.size, self.seen = size, 0  # seen: stream samples offered so far

    def rows(self, y: torch.Tensor) -> torch.Tensor:
        """(B,) the memory row each sample of a minibatch takes, or -1; as if offered one by one."""
        nth = self.seen + torch.arange(1, len(y) + 1, device=y.device)  # (B,)
        self.seen += len(y)
        return last_wins(reservoir_slots(nth, self.size))

    def state(self) -> dict:
        return {"seen": self.seen}

    def restore(self, state: dict, labels: torch.Tensor) -> None:
        self.seen = int(state["seen"])


class ClassBalancedReservoirBuffer(ReservoirBuffer):
    """Class-balanced reservoir sampling (CBRS; Chrysakis and Moens, ICML 2020, "Online
    continual learning from imbalanced data", Algorithm 1). While the memory is not full
    every sample enters. Then a sample of a class that is not among the largest in memory
    replaces a uniform row of a uniform one of the largest classes; a sample of a largest
    class enters with probability n_c_stored / n_c_seen, replacing a uniform row of its
    own class. So the memory stays a uniform sample of each class's stream while no class
    holds more than its share, however imbalanced the stream.

    One sample at a time on the host (the decision depends on the counts the previous
    sample left): one copy of the minibatch's labels per step. Its draws come from the
    global CPU generator, which the run seeds and checkpoints.
    """

    def __init__(self, size: int):
        super().__init__(size)
        self.stored: list[int] = []           # each row's class, as the memory holds it
        self.held: dict[int, int] = {}        # class -> rows it holds
        self.offered: dict[int, int] = {}     # class -> its samples offered so far (n_c)

    def rows(self, y: torch.Tensor) -> torch.Tensor:
        rows = [self._row(c) for c in y.tolist()]
        return last_wins(torch.tensor(rows, dtype=torch.long, device=y.device))

    def _row(self, c: int) -> int:
        """The row sample c takes (-1: none), with the counts updated as if it was written."""
        self.seen += 1
        self.offered[c] = self.offered.get(c, 0) + 1
        if len(self.stored) < self.size:
            self.stored.append(c)
            self.held[c] = self.held.get(c, 0) + 1
            return len(self.stored) - 1
        largest = max(self.held.values())
        if self.held.get(c, 0) < largest:  # not among the largest: a largest class gives a row up
            full = sorted(k for k, n in self.held.items() if n == largest)
            victim = full[_uniform(len(full))]
        elif torch.rand(()).item() < self.held[c] / self.offered[c]:  # reservoir within its own class
            victim = c
        else:
            return -1
        candidates = [i for i, k in enumerate(self.stored) if k == victim]
        row = candidates[_uniform(len(candidates))]
        self.held[victim] -= 1
        self.held[c] = self.held.get(c, 0) + 1
        self.stored[row] = c
        return row

    def state(self) -> dict:
        return {"seen": self.seen, "offered": [[c, n] for c, n in sorted(self.offered.items())]}

    def restore(self, state: dict, labels: torch.Tensor) -> None:
        super().restore(state, labels)
        self.offered = {int(c): int(n) for c, n in state["offered"]}
        self.stored = labels.tolist()
        self.held = {}
        for c in self.stored:
            self.held[c] = self.held.get(c, 0) + 1


class StreamReservoir:
    """Reservoir sampling (Vitter's algorithm R) of each class's stream samples into its
    own fixed rows of the memory, `offset` onwards, all on the device: the new classes'
    slots of a class-balanced memory while their experience streams.

    Args:
        budget: {class: rows}, in the order the rows are laid out.
        offset: the memory row of the first slot.
    """

    def __init__(self, budget: dict[int, int], offset: int, device: torch.device):
        caps = torch.tensor(list(budget.values()), device=device)  # (K,)
        self.budget = dict(budget)
        self.offset, self.size, self.offered = offset, int(caps.sum()), 0
        self.caps, self.seen = caps, torch.zeros_like(caps)  # seen: samples of each class offered so far
        self.starts = offset + caps.cumsum(0) - caps  # (K,) first row of each class
        self.local = torch.full((max(budget) + 1,), -1, dtype=torch.long, device=device)
        self.local[torch.tensor(list(budget), device=device)] = torch.arange(len(budget), device=device)
        self.row_class = torch.repeat_interleave(torch.arange(len(budget), device=device), caps)  # (size,)
        self.row_rank = torch.arange(self.size, device=device) - (self.starts - offset)[self.row_class]
        self.labels = torch.tensor(list(budget), device=device)[self.row_class]  # (size,)

    def state(self) -> dict:
        """What the reservoir has taken so far, as tensors and plain values."""
        return {"budget": [[c, n] for c, n in self.budget.items()], "offset": self.offset,
                "offered": self.offered, "seen": self.seen}

    @classmethod
    def restored(cls, state: dict, device: torch.device) -> StreamReservoir:
        reservoir = cls({int(c): int(n) for c, n in state["budget"]}, int(state["offset"]), device)
        reservoir.offered, reservoir.seen = int(state["offered"]), state["seen"].to(device)
        return reservoir

    def filled(self) -> torch.Tensor:
        """(size,) bool: which slots hold a sample."""
        return self.row_rank < self.seen[self.row_class]

    def replayable(self) -> torch.Tensor:
        """(offset + size,) 1 for each memory row that holds a sample (the old classes' rows
        and the slots filled so far), 0 for the others: replay's weights."""
        return torch.cat([torch.ones(self.offset, device=self.caps.device), self.filled().float()])

    def offer(self, y: torch.Tensor) -> torch.Tensor:
        """The memory row each sample of a minibatch takes, or -1; as if offered one by one."""
        self.offered += len(y)
        k = torch.where(y < len(self.local), self.local[y.clamp(max=len(self.local) - 1)], -1)  # (B,) local class
        new = k >= 0  # (B,) a sample of one of the streaming classes
        k = k.clamp(min=0)
        onehot = torch.nn.functional.one_hot(k, len(self.caps)) * new[:, None]  # (B, K)
        nth = self.seen[k] + (onehot.cumsum(0) * onehot).sum(1)  # (B,) the n-th sample of its class
        self.seen += onehot.sum(0)
        slot = reservoir_slots(nth, self.caps[k])
        return last_wins(torch.where(new & (slot >= 0), self.starts[k] + slot, -1))


def first_rows(rows: Rows, budget: dict[int, int]) -> Rows:
    """Each class of `budget`'s first budget[c] rows, class after class in its order (one gather)."""
    idx = [torch.nonzero(rows.labels == c).flatten()[:k] for c, k in budget.items()]
    return rows.take(torch.cat(idx) if idx else rows.labels.new_zeros(0))


def class_balanced_slots(old: Rows, new: Rows | None, budget: dict[int, int]) -> Rows:
    """A class-balanced memory's next rows: each old class cut to its first `budget[c]`
    rows (the filler ranked them, so shrinking drops the last-ranked), then the `new`
    classes' rows (filled to their slots, or stream slots to fill).

    Args:
        old: the memory's rows.
        new: the new classes' rows, or None (no new class).
        budget: {old class: rows it keeps}, in arrival order (`slots_per_class`).
    """
    kept = first_rows(old, budget)
    if new is None:
        return kept
    return Rows.cat([kept, new] if len(kept) else [new])  # an empty memory's tensors have no image shape


def _uniform(n: int) -> int:
    """A uniform index below n from the global CPU generator."""
    return int(torch.randint(n, ()).item())


def reservoir_slots(nth: torch.Tensor, cap: torch.Tensor | int) -> torch.Tensor:
    """Vitter's algorithm R for a batch: the slot the n-th sample offered to a reservoir of
    `cap` slots takes (nth counts from 1), or -1. The first `cap` samples fill the slots in
    order; the n-th after them replaces a uniform one of them with probability cap / n
    (mammoth's `reservoir`: randint(0, n) < cap)."""
    slot = torch.where(nth <= cap, nth - 1, (torch.rand(nth.shape, device=nth.device) * nth).long())
    return torch.where(slot < cap, slot, -1)


def last_wins(rows: torch.Tensor) -> torch.Tensor:
    """`rows` with all but the last of the samples that take the same row set to -1: two
    samples of one minibatch offered one after the other, the later one overwrites."""
    order = torch.argsort(rows * len(rows) + torch.arange(len(rows), device=rows.device))
    last = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
    last[:-1] = rows[order][:-1] != rows[order][1:]
    wins = torch.zeros_like(last)
    wins[order] = last
    return torch.where(wins, rows, -1)
