"""On-device replay memories as Avalanche plugins: a fixed budget of replay images that
lives on the training device. The plugins own the hooks only: the rows, their draws and
writes are the store's (`ccl.memory.store`), which rows a memory keeps is a buffer
policy's (`ccl.memory.buffers`), what fills a class's slots is a filler's
(`ccl.memory.fillers`). Two siblings: `DeviceMemoryPlugin` (class-balanced slots filled
at each experience's end) and `ReservoirMemoryPlugin` (one reservoir over the stream).

Memory samples are appended to each minibatch after it has been moved to the device, and
the plugin hands the strategy what it replayed as a `ReplayBatch` (`strategy.replay_batch`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from avalanche.core import SupervisedPlugin

from ccl.memory.batch import MemoryView, ReplayBatch
from ccl.memory.buffers import ReservoirBuffer, StreamReservoir, class_balanced_slots, first_rows
from ccl.memory.codec import MemoryCodec
from ccl.memory.fillers import Filler, learner_features
from ccl.memory.rows import Rows
from ccl.memory.slots import future_shares, slots_per_class
from ccl.memory.store import MemoryStore
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
    """What every on-device memory has: its rows on the device (`store`), and the replay
    of memory rows appended to each minibatch once it is on the device. The subclasses
    decide what enters the rows, and when.

    Args:
        mem_size: total images in memory.
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
        self.store = MemoryStore(self.device, codec, logits=needs.logits)
        self.augment = augment
        self._stream: tuple[torch.Tensor, torch.Tensor] | None = None  # this minibatch's stream samples
        self._stream_logits: torch.Tensor | None = None  # (B, classes) their logits, from this step's forward
        self.draws = needs.draws  # independent memory batches appended per minibatch (DER++: 2)
        self.replay_first_experience = needs.first_experience  # draw before an experience has ended
        self.classes: list[int] = []  # seen classes, in arrival order
        self.update_log: list[dict] = []  # one entry per experience: seconds and filler stats

    # The store's, read-only: what the runner, reports and tests read of a memory.
    codec = property(lambda self: self.store.codec)
    images = property(lambda self: self.store.images)
    labels = property(lambda self: self.store.labels)
    logits = property(lambda self: self.store.logits)
    soft = property(lambda self: self.store.soft)
    record_logits = property(lambda self: self.store.keeps_logits)

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
        return (len(self.store) > 0 and self.mem_batch > 0
                and (self.replay_first_experience or len(self.classes) > 0))

    def _append(self, strategy, idx: torch.Tensor, drawn: Rows) -> None:
        """Append the drawn memory rows (decoded, augmented) to the minibatch on the device,
        and hand the strategy the step's `ReplayBatch` (`strategy.replay_batch`)."""
        x, y, t = strategy.mbatch[0], strategy.mbatch[1], strategy.mbatch[-1]
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

    def state(self) -> dict:
        return {**self.store.state(), "classes": list(self.classes)}

    def checkpoint(self) -> dict:
        return self.state()


class DeviceMemoryPlugin(ReplayMemoryPlugin):
    """Replay from class-balanced slots of an on-device memory of at most `mem_size`
    images, filled at each experience's end (`class_balanced_slots`).

    Args (beside `ReplayMemoryPlugin`'s):
        filler: what fills the slots of new classes (random, herding, a condenser).
        real_images: classes -> (images, labels) of their real training data, normalised.
        schedule: the classes of every experience, in order, if known: fillers then learn
            the sizes each new class will be cut to later (`future_shares`).
        stream_slots: while an experience streams, its new classes' slots hold a
            class-balanced reservoir of their stream samples (`StreamReservoir`, with the
            logits the learner gave them, for DER), so the old classes are cut to their
            shares at its start instead of its end; the filler takes the slots over at the
            end. Off: new classes enter memory only at the end, as in Avalanche's
            ReplayPlugin. The ER, ER-ACE and DER papers (and mammoth) use a reservoir
            buffer, which holds stream samples while they stream: ER-ACE's masked loss
            relies on it.
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
        old = {c: budget[c] for c in self.classes}
        self._reservoir = StreamReservoir({c: budget[c] for c in new}, sum(old.values()), self.device)
        slots = self.store.blank(self._reservoir.labels, strategy.experience.dataset[0][0].shape)
        self.store.keep(class_balanced_slots(self.store.rows, slots, old))

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
        if reservoir is None:
            drawn = self.store.draw(self.mem_batch, self.draws)
        elif reservoir.offset == 0 and reservoir.offered == 0:
            return  # the first minibatch of the first experience: nothing to replay yet
        else:  # uniformly over the old classes' rows and the stream slots filled so far
            drawn = self.store.draw(self.mem_batch, self.draws, weights=reservoir.replayable())
        self._append(strategy, *drawn)

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
        logits = self._stream_logits.float()[kept] if self.record_logits else None  # as DER records them
        self.store.write(rows[kept], x[kept], y[kept], logits)
        self._stream_logits = None

    def after_training_exp(self, strategy, **kwargs):
        new = [c for c in strategy.experience.classes_in_this_experience if c not in self.classes]
        self._reservoir = None  # the filler takes the stream slots over: `update` keeps the old classes' rows only
        self._stream = None
        if self.recorder is not None:
            self.recorder.after_training_exp(strategy, **kwargs)
        self.update(sorted(new), strategy.model)

    def update(self, new_classes: list[int], learner: torch.nn.Module) -> None:
        """Shrink the old classes' slots and fill the new classes' ones (`class_balanced_slots`)."""
        start = time.perf_counter()
        budget = slots_per_class(self.mem_size, self.classes + new_classes)
        old = {c: budget[c] for c in self.classes}
        self.classes += new_classes
        new, stats = None, {}
        if new_classes:
            new = self._fill(new_classes, budget, first_rows(self.store.rows, old), learner)
            stats = dict(self.filler.stats)
        self.store.keep(class_balanced_slots(self.store.rows, new, old))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # so the time below is the real one
        self.update_log.append({"seconds": time.perf_counter() - start, "new_classes": new_classes,
                                "slots": {str(c): n for c, n in budget.items()}, **stats})

    def _fill(self, new_classes: list[int], budget: dict[int, int], kept: Rows, learner: torch.nn.Module) -> Rows:
        """The new classes' rows from the filler, which sees the old classes' `kept` rows
        and the sizes each new class will be cut to later."""
        real, labels = self.real_images(new_classes)
        context = (self.codec.decode(kept.images), kept.labels) if len(kept) else None
        seen = set(self.classes)
        upcoming = [g for g in self.schedule if not seen.issuperset(g)]
        later = future_shares(self.mem_size, self.classes, upcoming)
        trajectory = self.recorder.take(learner) if self.recorder is not None else None
        filled = self.filler.fill(real, labels, {c: budget[c] for c in new_classes}, learner,
                                  context, {c: later[c] for c in new_classes}, trajectory)
        images, image_labels = filled
        stored = self.codec.encode(images.to(self.device))
        soft = getattr(filled, "soft_labels", None)  # rows without one get NaN (Rows.cat)
        return Rows(stored, image_labels.to(self.device), self._logits_of(stored, learner),
                    soft.to(self.device) if soft is not None else None)

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
        self.store.restore(state)
        self.classes = list(state["classes"])
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

    @property
    def seen(self) -> int:
        """Stream samples offered so far."""
        return self.buffer.seen

    def before_forward(self, strategy, **kwargs):
        strategy.replay_batch = None  # until a draw hands one
        if self._replays_now():
            self._append(strategy, *self.store.draw(self.mem_batch, self.draws, distinct=True))

    def after_forward(self, strategy, **kwargs):
        self._keep_stream_logits(strategy)

    def after_update(self, strategy, **kwargs):
        """The step's stream samples are offered after the optimiser step (mammoth's
        `add_data` after `opt.step()`), with the logits of the forward that saw them: a
        row replayed in this step and overwritten by it kept its old logits as DER's
        target until the loss had read them."""
        x, y = self._stream
        if not self.store.capacity:  # allocated at the first sample, when its shape is known
            self.store.allocate(self.mem_size + 1, x.shape[1:], strategy.mb_output.shape[1])
        rows = self.buffer.rows(y)  # (B,) -1: not kept
        # Every sample is written, those not kept to the spare row past the memory: a
        # boolean selection of the kept ones would wait for the device (a host sync).
        rows = torch.where(rows >= 0, rows, self.mem_size)
        self.store.write(rows, x, y, self._stream_logits.float() if self.record_logits else None)
        self._stream_logits = None
        self.store.filled = min(self.seen, self.mem_size)

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
        self.buffer.restore(state, state["labels"])
        self.store.restore(state, capacity=self.mem_size + 1)  # and the spare row


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
