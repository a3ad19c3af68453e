"""`DeviceMemoryPlugin`: a fixed budget of replay images that lives on the training device.

Avalanche's ReplayPlugin collates memory samples on the CPU through its own data
loader; here the memory is a tensor on the device and its samples are appended to each
minibatch after the minibatch has been moved there, so replay costs one gather.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from avalanche.core import SupervisedPlugin

from ccl.condense import dsa
from ccl.memory.codec import MemoryCodec
from ccl.memory.fillers import Filler, learner_features
from ccl.memory.slots import future_shares, slots_per_class

RealImages = Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]]


class DeviceMemoryPlugin(SupervisedPlugin):
    """Replay from an on-device memory of at most `mem_size` images.

    Args:
        mem_size: total images in memory, shared by all classes seen so far.
        mem_batch: memory samples appended to every training minibatch.
        filler: what fills the slots of new classes (random, herding, a condenser).
        real_images: classes -> (images, labels) of their real training data, normalised.
        device: where the memory lives (the training device).
        codec: how images are stored (float32 by default; float16 or uint8 pixels
            to compare memories at equal bytes).
        augment: DSA settings for a fresh augmentation of every replayed sample, or None.
            Condensed images are made to be trained on under DSA; without it a learner
            fits trajectory-matched ones to a quarter of real images' loss within a few
            steps, and they hold their classes less.
        schedule: the classes of every experience, in order, if known: fillers then learn
            the sizes each new class will be cut to later (`future_shares`).
    """

    def __init__(self, mem_size: int, mem_batch: int, filler: Filler, real_images: RealImages,
                 device: torch.device, codec: MemoryCodec | None = None,
                 augment: dsa.DSASettings | None = None, schedule: list[list[int]] | None = None):
        super().__init__()
        self.mem_size, self.mem_batch = mem_size, mem_batch
        self.filler, self.real_images, self.device = filler, real_images, torch.device(device)
        self.codec = codec or MemoryCodec(torch.float32, (0.0,), (1.0,))
        self.augment = augment
        self.schedule = [list(g) for g in schedule or []]
        # Set by a replay strategy (ccl.strategies) before training:
        self.draws = 1              # independent memory batches appended per minibatch (DER++: 2)
        self.record_logits = False  # keep the learner's logits of every image as it enters (DER)
        self.logits = torch.empty(0, device=self.device)  # (N, num_classes) when recorded
        self.last_draw: torch.Tensor | None = None  # indices replayed in the current minibatch
        self.classes: list[int] = []  # seen classes, in arrival order
        self.images = torch.empty(0, device=self.device)
        self.labels = torch.empty(0, dtype=torch.long, device=self.device)
        self.update_log: list[dict] = []  # one entry per experience: seconds and filler stats

    def before_forward(self, strategy, **kwargs):
        self.last_draw = None
        if len(self.labels) == 0 or self.mem_batch == 0:
            return
        idx = torch.randint(len(self.labels), (self.draws * self.mem_batch,), device=self.device)
        self.last_draw = idx
        x, y, t = strategy.mbatch[0], strategy.mbatch[1], strategy.mbatch[-1]
        replayed = self.codec.decode(self.images[idx])  # (mem_batch, C, H, W)
        if self.augment is not None:
            replayed = dsa.augment(replayed, self.augment)
        strategy.mbatch[0] = torch.cat([x, replayed])  # (B + mem_batch, C, H, W)
        strategy.mbatch[1] = torch.cat([y, self.labels[idx]])
        strategy.mbatch[-1] = torch.cat([t, torch.zeros_like(self.labels[idx])])  # class-incremental: task 0

    def after_training_exp(self, strategy, **kwargs):
        new = [c for c in strategy.experience.classes_in_this_experience if c not in self.classes]
        self.update(sorted(new), strategy.model)

    def update(self, new_classes: list[int], learner: torch.nn.Module) -> None:
        """Shrink the old classes' slots and fill the new classes' ones."""
        start = time.perf_counter()
        self.classes += new_classes
        budget = slots_per_class(self.mem_size, self.classes)
        kept = [self._first(c, budget[c]) for c in self.classes if c not in new_classes]  # (images, labels, logits)
        stats: dict = {}
        if new_classes:
            real, labels = self.real_images(new_classes)
            context = None
            if kept:
                context = (self.codec.decode(torch.cat([k[0] for k in kept])), torch.cat([k[1] for k in kept]))
            seen = set(self.classes)
            upcoming = [g for g in self.schedule if not seen.issuperset(g)]
            later = future_shares(self.mem_size, self.classes, upcoming)
            images, image_labels = self.filler.fill(real, labels, {c: budget[c] for c in new_classes}, learner,
                                                    context, {c: later[c] for c in new_classes})
            stats = dict(self.filler.stats)
            stored = self.codec.encode(images.to(self.device))
            kept.append((stored, image_labels.to(self.device), self._logits_of(stored, learner)))
        self.images = torch.cat([k[0] for k in kept])
        self.labels = torch.cat([k[1] for k in kept])
        self.logits = torch.cat([k[2] for k in kept])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # so the time below is the real one
        self.update_log.append({"seconds": time.perf_counter() - start, "new_classes": new_classes,
                                "slots": {str(c): n for c, n in budget.items()}, **stats})

    def _first(self, c: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.nonzero(self.labels == c).flatten()[:k]
        return self.images[idx], self.labels[idx], self.logits[idx] if self.record_logits else self.logits

    def _logits_of(self, stored: torch.Tensor, learner: torch.nn.Module) -> torch.Tensor:
        """(n, classes) logits of the images as stored (after the codec), as DER records
        them when a sample enters its buffer; empty unless a strategy asks for them."""
        if not self.record_logits:
            return self.logits
        return learner_features(learner, self.codec.decode(stored), logits=True).float()

    def state(self) -> dict:
        state = {"images": self.images, "labels": self.labels, "classes": list(self.classes)}
        return {**state, "logits": self.logits} if self.record_logits else state

    def checkpoint(self) -> dict:
        return self.state()

    def restore(self, state: dict) -> None:
        self.images = state["images"].to(self.device)
        self.labels = state["labels"].to(self.device)
        self.classes = list(state["classes"])
        if self.record_logits:
            self.logits = state["logits"].to(self.device)


class AugmentPlugin(SupervisedPlugin):
    """A fresh DSA draw on every training minibatch: GDumb's learner trains on the memory
    alone, so there the whole minibatch is memory images."""

    def __init__(self, settings: dsa.DSASettings):
        super().__init__()
        self.settings = settings

    def before_forward(self, strategy, **kwargs):
        strategy.mbatch[0] = dsa.augment(strategy.mbatch[0], self.settings)
