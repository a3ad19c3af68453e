"""`MemoryStore`: a replay memory's rows on the training device, the draw of the rows each
step replays, and the write of stream samples into their rows. Which row a sample takes
is a buffer policy's answer (`ccl.memory.buffers`), when it is asked is the plugin's
(`ccl.memory.plugin`): the store knows neither, and nothing of Avalanche.

Avalanche's ReplayPlugin collates memory samples on the CPU through its own data loader;
here the rows stay on the device, so a step's replay costs one gather per column.
"""
from __future__ import annotations

import torch

from ccl.memory.codec import MemoryCodec
from ccl.memory.rows import Rows


class MemoryStore:
    """A memory's rows (`Rows`: images as the codec stores them, labels, DER's logits,
    soft targets) on the device. They are handed over whole (`keep`: a class-balanced
    memory at each experience's end) or allocated once and written sample by sample
    (`allocate`: a reservoir); the memory is the first `filled` of them.

    Args:
        device: where the rows live (the training device).
        codec: how images are stored (float32 by default; float16 or uint8 pixels to
            compare memories at equal bytes).
        logits: every row keeps the learner's logits of its image as it entered (DER).
    """

    def __init__(self, device: torch.device, codec: MemoryCodec | None = None, logits: bool = False):
        self.device = torch.device(device)
        self.codec = codec or MemoryCodec(torch.float32, (0.0,), (1.0,))
        self.keeps_logits = logits
        self._images = torch.empty(0, device=self.device)  # (capacity, ...) as the codec stores them
        self._labels = torch.empty(0, dtype=torch.long, device=self.device)  # (capacity,)
        self._logits = torch.empty(0, device=self.device)  # (capacity, classes) once a row has logits
        # (capacity, classes) soft-target logits of condensed rows that learned them (PAD's
        # soft labels), NaN rows for the others; empty while no row has one.
        self._soft = torch.empty(0, device=self.device)
        self.filled = 0  # the memory is the first `filled` rows

    def __len__(self) -> int:
        return self.filled

    @property
    def capacity(self) -> int:
        """Rows allocated or kept (0: none yet)."""
        return len(self._labels)

    @property
    def images(self) -> torch.Tensor:
        return self._images[:self.filled]  # (N, ...) as stored

    @property
    def labels(self) -> torch.Tensor:
        return self._labels[:self.filled]  # (N,)

    @property
    def logits(self) -> torch.Tensor:
        return self._logits[:self.filled]  # (N, classes); empty unless kept

    @property
    def soft(self) -> torch.Tensor:
        return self._soft[:self.filled]  # (N, classes); empty while no row has one

    @property
    def rows(self) -> Rows:
        """Every row, with the columns this memory holds (logits where a strategy asked
        for them, soft targets once a row has one)."""
        return Rows(self.images, self.labels, self.logits if self.keeps_logits else None,
                    self.soft if len(self._soft) else None)

    @property
    def allocated(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Every row's columns, filled or not (images as stored, labels, logits or None), to
        write in place: a memory that moves its own rows (online summaries) writes here."""
        return self._images, self._labels, self._logits if self.keeps_logits else None

    def keep(self, rows: Rows) -> None:
        """Make `rows` the memory's rows; a column they lack stays as it was (a stream
        slot's logits join at its first write)."""
        self._images, self._labels, self.filled = rows.images, rows.labels, len(rows)
        if rows.logits is not None:
            self._logits = rows.logits
        if rows.soft is not None:
            self._soft = rows.soft
            if len(self._soft) and bool(self._soft.isnan().all()):  # no row has one (every class refused): none
                self._soft = self._soft.new_empty(0)  # kept, as `ccl.fields.soft_targets_problem` reads a checkpoint

    def blank(self, labels: torch.Tensor, shape: torch.Size) -> Rows:
        """Rows for stream samples yet to come (stream slots): zero images of `shape` as
        stored, their `labels`, and zero logits once the memory knows their width
        (before that, the logits join at the first write)."""
        logits = None
        if self.keeps_logits and self._logits.dim() == 2:
            logits = self._logits.new_zeros(len(labels), self._logits.shape[1])
        return Rows(self.codec.encode(torch.zeros(len(labels), *shape, device=self.device)), labels, logits)

    def allocate(self, capacity: int, shape: torch.Size, classes: int) -> None:
        """Zero rows for `capacity` samples written one by one (a reservoir's), none filled:
        written in place, the memory never grows by a copy."""
        self._images = self.codec.encode(torch.zeros(capacity, *shape, device=self.device))
        self._labels = torch.zeros(capacity, dtype=torch.long, device=self.device)
        if self.keeps_logits:
            self._logits = torch.zeros(capacity, classes, device=self.device)
        self.filled = 0

    def draw(self, size: int, draws: int = 1, distinct: bool = False,
             weights: torch.Tensor | None = None) -> tuple[torch.Tensor, Rows]:
        """`draws` independent memory batches of `size` rows, one after the other: (R,)
        their row indices and the rows (one gather). Uniform with replacement; `distinct`:
        each batch without replacement, min(size, filled) rows (mammoth's
        `np.random.choice(..., replace=False)`); `weights` (filled,): with replacement in
        proportion to them (0: a row not to replay)."""
        if distinct:
            k = min(size, self.filled)
            idx = torch.cat([torch.randperm(self.filled, device=self.device)[:k] for _ in range(draws)])
        elif weights is None:
            idx = torch.randint(self.filled, (draws * size,), device=self.device)
        else:
            idx = torch.multinomial(weights, draws * size, replacement=True)
        return idx, self.rows.take(idx)

    def write(self, idx: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
              logits: torch.Tensor | None = None) -> None:
        """Stream samples into rows `idx` (distinct, below `capacity`): their images
        (encoded), labels, and the logits the learner gave them (DER)."""
        if logits is not None and len(self._logits) < len(self._labels):  # the first logits: zeros for the others
            self._logits = torch.cat([self._logits.view(-1, logits.shape[1]),
                                      logits.new_zeros(len(self._labels) - len(self._logits), logits.shape[1])])
        self._images[idx] = self.codec.encode(images)
        self._labels[idx] = labels
        if logits is not None:
            self._logits[idx] = logits

    def state(self) -> dict:
        """The rows as a checkpoint holds them (`Rows.state`)."""
        return self.rows.state()

    def restore(self, state: dict, capacity: int | None = None) -> None:
        """The rows of `state()`; into `capacity` allocated rows for a memory written
        sample by sample (a reservoir's: none until its first sample, as it was)."""
        images, labels = state["images"].to(self.device), state["labels"].to(self.device)
        logits = state["logits"].to(self.device) if self.keeps_logits else None
        if capacity is None:
            self._images, self._labels, self.filled = images, labels, len(labels)
            self._logits = logits if logits is not None else self._logits
            if "soft_targets" in state:
                self._soft = state["soft_targets"].to(self.device)
        elif len(labels):
            self.allocate(capacity, images.shape[1:], logits.shape[1] if logits is not None else 0)
            n = self.filled = len(labels)
            self._images[:n], self._labels[:n] = images, labels  # as stored: already encoded
            if logits is not None:
                self._logits[:n] = logits
