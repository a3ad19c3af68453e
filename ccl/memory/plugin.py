"""On-device replay memories: a fixed budget of replay images that lives on the training
device. `ReplayMemoryPlugin` holds the rows and replays them; its two kinds are siblings:
`DeviceMemoryPlugin` (class-balanced slots filled at each experience's end) and
`ReservoirMemoryPlugin` (one reservoir over the stream).

Avalanche's ReplayPlugin collates memory samples on the CPU through its own data
loader; here the memory is a tensor on the device and its samples are appended to each
minibatch after the minibatch has been moved there, so replay costs one gather. The
plugin hands the strategy what it replayed as a `ReplayBatch` (`strategy.replay_batch`);
the rows are plain data (`Rows`), and which row a stream sample takes is a buffer policy
(`ccl.memory.buffers`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from avalanche.core import SupervisedPlugin

from ccl.memory.batch import MemoryView, ReplayBatch
from ccl.memory.buffers import ReservoirBuffer, last_wins, reservoir_slots
from ccl.memory.codec import MemoryCodec
from ccl.memory.fillers import Filler, learner_features
from ccl.memory.rows import Rows
from ccl.memory.slots import future_shares, slots_per_class
from ccl.memory.trajectory import TrajectoryRecorder

RealImages = Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class MemoryNeeds:
    """What a replay strategy asks of an on-device memory, given when the memory is built
    (as mammoth's `Buffer` declares its per-row fields): the memory never learns which
    strategy asked, and no strategy sets its attributes afterwards.

    Args:
        draws: independent memory batches of `mem_batch` appended to every minibatch
            (DER++: 2, one for its MSE, one for its cross-entropy).
        logits: every row keeps the learner's logits of its image as it enters (DER).
        first_experience: replay during the first experience too, when the memory holds
            only that experience's own stream samples (a reservoir, or stream slots);
            False: from the second experience on, as mammoth's ER-ACE (`current_task > 0`).
    """
    draws: int = 1
    logits: bool = False
    first_experience: bool = True

    def __post_init__(self):
        if self.draws < 1:
            raise ValueError(f"draws must be >= 1, got {self.draws}")


class ReplayMemoryPlugin(SupervisedPlugin):
    """What every on-device memory has: its rows on the device (images as the codec stores
    them, labels, and the per-row fields strategies read: DER's logits, soft targets), and
    the replay of memory rows appended to each minibatch once it is on the device. The
    subclasses decide what enters the rows, and when.

    Args:
        mem_size: total images in memory, shared by all classes seen so far.
        mem_batch: memory samples appended to every training minibatch.
        device: where the memory lives (the training device).
        codec: how images are stored (float32 by default; float16 or uint8 pixels
            to compare memories at equal bytes).
        augment: a fresh augmentation of every replayed sample (x -> x: DSA or crop and
            flip), or None. Condensed images are made to be trained on under DSA; without it a learner
            fits trajectory-matched ones to a quarter of real images' loss within a few
            steps, and they hold their classes less.
        needs: what the replay strategy asks of the memory (draws per minibatch, logits
            per row), the strategy entry's `memory_needs`; plain replay by default.
    """

    def __init__(self, mem_size: int, mem_batch: int, device: torch.device, codec: MemoryCodec | None = None,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None, needs: MemoryNeeds = MemoryNeeds()):
        super().__init__()
        self.mem_size, self.mem_batch, self.device = mem_size, mem_batch, torch.device(device)
        self.codec = codec or MemoryCodec(torch.float32, (0.0,), (1.0,))
        self.augment = augment
        self._stream: tuple[torch.Tensor, torch.Tensor] | None = None  # this minibatch's stream samples
        self._stream_logits: torch.Tensor | None = None  # (B, classes) their logits, from this step's forward
        self.draws = needs.draws  # independent memory batches appended per minibatch (DER++: 2)
        self.record_logits = needs.logits  # keep the learner's logits of every image as it enters (DER)
        self.replay_first_experience = needs.first_experience  # draw before an experience has ended
        self.logits = torch.empty(0, device=self.device)  # (N, num_classes) when recorded
        # (N, num_classes) soft-target logits of condensed rows that learned them (PAD's
        # soft labels), NaN rows for the others; empty while no row has one.
        self.soft = torch.empty(0, device=self.device)
        self.classes: list[int] = []  # seen classes, in arrival order
        self.images = torch.empty(0, device=self.device)
        self.labels = torch.empty(0, dtype=torch.long, device=self.device)
        self.update_log: list[dict] = []  # one entry per experience: seconds and filler stats

    def before_training_iteration(self, strategy, **kwargs):
        # The stream samples as they arrived, before a stream augmentation (an earlier
        # plugin's before_forward) changes them: memory keeps the images themselves.
        self._stream = (strategy.mbatch[0], strategy.mbatch[1])

    def _keep_stream_logits(self, strategy) -> None:
        """Keep the logits this step's forward gave the stream samples (DER stores them
        with a sample), for when the samples enter the memory after the optimiser step:
        a detached view of the output, no copy."""
        if self.record_logits:
            self._stream_logits = strategy.mb_output[:len(self._stream[1])].detach()  # (B, classes)

    def _replays_now(self) -> bool:
        """Whether this minibatch gets memory samples: not before the memory has a row,
        nor during the first experience (no class of an earlier one yet) for a strategy
        that replays from the second on."""
        return (len(self.labels) > 0 and self.mem_batch > 0
                and (self.replay_first_experience or len(self.classes) > 0))

    def _append(self, strategy, idx: torch.Tensor) -> None:
        """Append memory rows `idx` (decoded, augmented) to the minibatch on the device, and
        hand the strategy the step's `ReplayBatch` (`strategy.replay_batch`)."""
        x, y, t = strategy.mbatch[0], strategy.mbatch[1], strategy.mbatch[-1]
        drawn = self.rows.take(idx)  # one gather
        strategy.replay_batch = ReplayBatch(len(y), self.draws, idx, drawn.logits, drawn.soft)
        replayed = self.codec.decode(drawn.images)  # (len(idx), C, H, W)
        if self.augment is not None:
            replayed = self.augment(replayed)
        labels = drawn.labels  # (len(idx),)
        strategy.mbatch[0] = torch.cat([x, replayed])  # (B + len(idx), C, H, W)
        strategy.mbatch[1] = torch.cat([y, labels])
        strategy.mbatch[-1] = torch.cat([t, torch.zeros_like(labels)])  # class-incremental: task 0

    def view(self) -> MemoryView:
        """The whole memory, read-only, for a strategy that needs all of it (iCaRL, BiC, GDumb)."""
        return MemoryView(tuple(self.classes), self.labels, self.codec.decode, self.images, self.augment)

    @property
    def rows(self) -> Rows:
        """Every row, with the columns this memory holds (logits where a strategy asked
        for them, soft targets once a row has one)."""
        return Rows(self.images, self.labels, self.logits if self.record_logits else None,
                    self.soft if len(self.soft) else None)

    def _keep(self, rows: Rows) -> None:
        """Make `rows` the memory's rows."""
        self.images, self.labels = rows.images, rows.labels
        if rows.logits is not None:
            self.logits = rows.logits
        if rows.soft is not None:
            self.soft = rows.soft
            if len(self.soft) and bool(self.soft.isnan().all()):  # no row has one (every class refused): none
                self.soft = self.soft.new_empty(0)  # kept, as `ccl.fields.soft_targets_problem` reads a checkpoint

    def state(self) -> dict:
        return {**self.rows.state(), "classes": list(self.classes)}

    def checkpoint(self) -> dict:
        return self.state()


class DeviceMemoryPlugin(ReplayMemoryPlugin):
    """Replay from class-balanced slots of an on-device memory of at most `mem_size`
    images, filled at each experience's end.

    Args (beside `ReplayMemoryPlugin`'s):
        filler: what fills the slots of new classes (random, herding, a condenser).
        real_images: classes -> (images, labels) of their real training data, normalised.
        schedule: the classes of every experience, in order, if known: fillers then learn
            the sizes each new class will be cut to later (`future_shares`).
        stream_slots: while an experience streams, its new classes' slots hold a
            class-balanced reservoir of their stream samples (with the logits the learner
            gave them, for DER), so the old classes are cut to their shares at its start
            instead of its end; the filler takes the slots over at the end. Off: new
            classes enter memory only at the end, as in Avalanche's ReplayPlugin. The
            ER, ER-ACE and DER papers (and mammoth) use a reservoir buffer, which holds
            stream samples while they stream: ER-ACE's masked loss relies on it.
    """

    def __init__(self, mem_size: int, mem_batch: int, filler: Filler, real_images: RealImages,
                 device: torch.device, codec: MemoryCodec | None = None,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None, schedule: list[list[int]] | None = None,
                 stream_slots: bool = False, needs: MemoryNeeds = MemoryNeeds()):
        super().__init__(mem_size, mem_batch, device, codec, augment, needs)
        self.filler, self.real_images = filler, real_images
        self.schedule = [list(g) for g in schedule or []]
        self.stream_slots = stream_slots
        self._reservoir: StreamReservoir | None = None  # the new classes' slots while they stream
        # The learner's training on each experience, for a filler that matches it (PAD on
        # the learner); None for the others.
        self.recorder = TrajectoryRecorder() if filler is not None and filler.wants_trajectory else None

    def before_training_exp(self, strategy, **kwargs):
        if self.recorder is not None:
            self.recorder.before_training_exp(strategy, **kwargs)
        new = sorted(c for c in strategy.experience.classes_in_this_experience if c not in self.classes)
        if not (self.stream_slots and new and self.mem_batch):
            return
        budget = slots_per_class(self.mem_size, self.classes + new)
        kept = [self._first(c, budget[c]) for c in self.classes]
        self._reservoir = StreamReservoir({c: budget[c] for c in new}, sum(budget[c] for c in self.classes),
                                          self.device)
        shape = strategy.experience.dataset[0][0].shape
        empty = self.codec.encode(torch.zeros(self._reservoir.size, *shape, device=self.device))
        self.images = torch.cat([k.images for k in kept] + [empty])
        self.labels = torch.cat([k.labels for k in kept] + [self._reservoir.labels])
        if self.record_logits and kept:
            self.logits = torch.cat([k.logits for k in kept])  # the stream slots' rows join at the first forward
        if len(self.soft):  # stream samples are real: no soft target
            self.soft = torch.cat([k.soft for k in kept] + [self.soft.new_full((self._reservoir.size,
                                                                                self.soft.shape[1]), float("nan"))])

    def after_training_epoch(self, strategy, **kwargs):
        if self.recorder is not None:
            self.recorder.after_training_epoch(strategy, **kwargs)

    def before_training_iteration(self, strategy, **kwargs):
        if self.recorder is not None:
            self.recorder.before_training_iteration(strategy, **kwargs)
        super().before_training_iteration(strategy, **kwargs)

    def before_forward(self, strategy, **kwargs):
        strategy.replay_batch = None  # until a draw hands one
        reservoir = self._reservoir
        if not self._replays_now():
            return
        n = self.draws * self.mem_batch
        if reservoir is None:
            idx = torch.randint(len(self.labels), (n,), device=self.device)
        elif reservoir.offset == 0 and reservoir.offered == 0:
            return  # the first minibatch of the first experience: nothing to replay yet
        else:  # uniformly over the old classes' rows and the stream slots filled so far
            idx = torch.multinomial(torch.cat([torch.ones(reservoir.offset, device=self.device),
                                               reservoir.filled().float()]), n, replacement=True)
        self._append(strategy, idx)

    def after_forward(self, strategy, **kwargs):
        if self._reservoir is not None:
            self._keep_stream_logits(strategy)

    def after_update(self, strategy, **kwargs):
        """The step's stream samples enter their slots after the optimiser step, as in
        mammoth: a row replayed in this step and overwritten by it kept its old logits
        until the loss had read them."""
        if self._reservoir is None:
            return
        x, y = self._stream
        rows = self._reservoir.offer(y)  # (B,) the memory row each stream sample takes, -1: none
        kept = rows >= 0
        self.images[rows[kept]] = self.codec.encode(x[kept])
        if self.record_logits:
            logits = self._stream_logits.float()  # (B, classes) as DER records them
            if len(self.logits) < len(self.labels):
                self.logits = torch.cat([self.logits.view(-1, logits.shape[1]),
                                         logits.new_zeros(self._reservoir.size, logits.shape[1])])
            self.logits[rows[kept]] = logits[kept]
        self._stream_logits = None

    def after_training_exp(self, strategy, **kwargs):
        new = [c for c in strategy.experience.classes_in_this_experience if c not in self.classes]
        if self._reservoir is not None:  # the filler takes the stream slots over
            n = self._reservoir.offset
            self.images, self.labels = self.images[:n], self.labels[:n]
            self.logits = self.logits[:n] if self.record_logits else self.logits
            self.soft = self.soft[:n] if len(self.soft) else self.soft
            self._reservoir = None
        self._stream = None
        if self.recorder is not None:
            self.recorder.after_training_exp(strategy, **kwargs)
        self.update(sorted(new), strategy.model)

    def update(self, new_classes: list[int], learner: torch.nn.Module) -> None:
        """Shrink the old classes' slots and fill the new classes' ones."""
        start = time.perf_counter()
        self.classes += new_classes
        budget = slots_per_class(self.mem_size, self.classes)
        kept = [self._first(c, budget[c]) for c in self.classes if c not in new_classes]
        stats: dict = {}
        if new_classes:
            real, labels = self.real_images(new_classes)
            context = None
            if kept:
                context = (self.codec.decode(torch.cat([k.images for k in kept])), torch.cat([k.labels for k in kept]))
            seen = set(self.classes)
            upcoming = [g for g in self.schedule if not seen.issuperset(g)]
            later = future_shares(self.mem_size, self.classes, upcoming)
            trajectory = self.recorder.take(learner) if self.recorder is not None else None
            filled = self.filler.fill(real, labels, {c: budget[c] for c in new_classes}, learner,
                                      context, {c: later[c] for c in new_classes}, trajectory)
            images, image_labels = filled
            stats = dict(self.filler.stats)
            stored = self.codec.encode(images.to(self.device))
            soft = getattr(filled, "soft_labels", None)  # rows without one get NaN (Rows.cat)
            kept.append(Rows(stored, image_labels.to(self.device), self._logits_of(stored, learner),
                             soft.to(self.device) if soft is not None else None))
        self._keep(Rows.cat(kept))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # so the time below is the real one
        self.update_log.append({"seconds": time.perf_counter() - start, "new_classes": new_classes,
                                "slots": {str(c): n for c, n in budget.items()}, **stats})

    def _first(self, c: int, k: int) -> Rows:
        """Class c's first k rows."""
        return self.rows.take(torch.nonzero(self.labels == c).flatten()[:k])

    def _logits_of(self, stored: torch.Tensor, learner: torch.nn.Module) -> torch.Tensor | None:
        """(n, classes) logits of the images as stored (after the codec), as DER records
        them when a sample enters its buffer; None unless a strategy asks for them."""
        if not self.record_logits:
            return None
        return learner_features(learner, self.codec.decode(stored), logits=True).float()

    def checkpoint(self) -> dict:
        """`state()` and what is in flight inside an experience: the stream slots'
        reservoir and the learner's trajectory recorded so far."""
        state = self.state()
        if self._reservoir is not None:
            state["stream_reservoir"] = self._reservoir.state()
        if self.recorder is not None:
            state["trajectory"] = self.recorder.state()
        return state

    def restore(self, state: dict) -> None:
        self.images = state["images"].to(self.device)
        self.labels = state["labels"].to(self.device)
        self.classes = list(state["classes"])
        if self.record_logits:
            self.logits = state["logits"].to(self.device)
        if "soft_targets" in state:
            self.soft = state["soft_targets"].to(self.device)
        reservoir = state.get("stream_reservoir")
        self._reservoir = StreamReservoir.restored(reservoir, self.device) if reservoir is not None else None
        if self.recorder is not None and "trajectory" in state:
            self.recorder.restore(state["trajectory"])


class ReservoirMemoryPlugin(ReplayMemoryPlugin):
    """The buffer of the ER, ER-ACE and DER papers (mammoth's `Buffer`), on the device:
    every stream sample is offered to one buffer of `mem_size` rows over the whole stream,
    whose policy (`buffer`, by default Vitter's algorithm R, so the memory is a uniform
    sample of everything seen, whatever its class; `ccl.memory.buffers`) says which row it
    takes; a sample enters after the optimiser step of the minibatch that brought it, with
    the logits that step's forward gave it (DER's). Replay draws `mem_batch` distinct samples
    (mammoth: `np.random.choice(..., replace=False)`), `draws` times independently.

    Departs from mammoth: the samples of one minibatch are offered together (two that
    take the same slot: the later wins, as one by one), and memory samples may be
    stored in a lower precision (`codec`). No filler: nothing is chosen at an
    experience's end, so condensation has no place here.
    """

    def __init__(self, mem_size: int, mem_batch: int, device: torch.device, codec: MemoryCodec | None = None,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None, needs: MemoryNeeds = MemoryNeeds(),
                 buffer: type[ReservoirBuffer] = ReservoirBuffer):
        super().__init__(mem_size, mem_batch, device, codec, augment, needs)
        self.buffer = buffer(mem_size)  # which row each stream sample takes
        self._rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # all mem_size rows

    @property
    def seen(self) -> int:
        """Stream samples offered so far."""
        return self.buffer.seen

    def before_forward(self, strategy, **kwargs):
        strategy.replay_batch = None  # until a draw hands one
        filled = len(self.labels)
        if not self._replays_now():
            return
        k = min(self.mem_batch, filled)
        idx = torch.cat([torch.randperm(filled, device=self.device)[:k] for _ in range(self.draws)])
        self._append(strategy, idx)  # (draws * k,) rows

    def after_forward(self, strategy, **kwargs):
        self._keep_stream_logits(strategy)

    def after_update(self, strategy, **kwargs):
        """The step's stream samples are offered after the optimiser step (mammoth's
        `add_data` after `opt.step()`), with the logits of the forward that saw them: a
        row replayed in this step and overwritten by it kept its old logits as DER's
        target until the loss had read them."""
        x, y = self._stream
        if self._rows is None:  # allocated at the first sample, when its shape is known
            self._allocate(x.shape[1:], strategy.mb_output.shape[1])
        rows = self.buffer.rows(y)  # (B,) -1: not kept
        # Every sample is written, those not kept to the spare row past the memory: a
        # boolean selection of the kept ones would wait for the device (a host sync).
        rows = torch.where(rows >= 0, rows, self.mem_size)
        images, labels, logits = self._rows
        images[rows] = self.codec.encode(x)
        labels[rows] = y
        if self.record_logits:
            logits[rows] = self._stream_logits.float()
            self._stream_logits = None
        self._view(min(self.seen, self.mem_size))

    def _allocate(self, shape: torch.Size, num_classes: int) -> None:
        """Full-size rows and a spare one past them (where the samples the reservoir does
        not keep are written); `images`, `labels` and `logits` are views of the filled ones."""
        n = self.mem_size + 1
        self._rows = (self.codec.encode(torch.zeros(n, *shape, device=self.device)),
                      torch.zeros(n, dtype=torch.long, device=self.device),
                      torch.zeros(n, num_classes, device=self.device))
        self._view(0)

    def _view(self, filled: int) -> None:
        images, labels, logits = self._rows
        self.images, self.labels = images[:filled], labels[:filled]
        self.logits = logits[:filled] if self.record_logits else self.logits

    def after_training_exp(self, strategy, **kwargs):
        new = sorted(c for c in strategy.experience.classes_in_this_experience if c not in self.classes)
        self.classes += new
        counts = torch.bincount(self.labels, minlength=max(self.classes, default=-1) + 1).tolist()
        self.update_log.append({"seconds": 0.0, "new_classes": new, "seen": self.seen,
                                "per_class": {str(c): counts[c] for c in self.classes}})

    def checkpoint(self) -> dict:
        return {**self.state(), **self.buffer.state(), "logits": self.logits}

    def restore(self, state: dict) -> None:
        self.classes = list(state["classes"])
        images, labels, logits = state["images"], state["labels"], state["logits"]
        self.buffer.restore(state, labels)
        if len(labels):
            self._allocate(images.shape[1:], logits.shape[1] if self.record_logits else 1)
            for rows, stored in zip(self._rows, (images, labels, logits if self.record_logits else None)):
                if stored is not None:
                    rows[:len(labels)] = stored.to(self.device)  # as stored: already encoded
            self._view(len(labels))


class StreamReservoir:
    """Reservoir sampling (Vitter's algorithm R) of each class's stream samples into its
    own fixed rows of the memory, `offset` onwards, all on the device.

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


class AugmentPlugin(SupervisedPlugin):
    """A fresh augmentation of every training minibatch's images, `augment(x) -> x`: DSA
    under GDumb, whose learner trains on the memory alone; crop and flip of the stream
    samples under replay, where it goes before the memory plugin (which appends its
    own samples, augmented its own way, after it)."""

    def __init__(self, augment: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.augment = augment

    def before_forward(self, strategy, **kwargs):
        strategy.mbatch[0] = self.augment(strategy.mbatch[0])
