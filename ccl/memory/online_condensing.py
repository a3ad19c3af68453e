"""A memory that condenses while an online stream passes (`--memory online-datadam`): a share
of its slots holds summaries, images moved every few steps so that the learner's own network
sees in them, class by class, what it sees in a window of recent stream samples; the other
slots are a reservoir of real stream samples.

The setting is SSD's (Gu et al., AAAI 2024, "Summarizing Stream Data for Memory-Constrained
Online Continual Learning"): summaries initialised from distinct real samples, updated every
k steps against the model being trained, on recent stream data. The objective here is
DataDAM's (`ccl.condense.datadam`, Sajedi et al. 2023): its attention term over the
learner's intermediate stages and its embedding (linear-kernel MMD) term, on a copy of the
learner with its current weights (`network = "learner"`'s stage taps, `ccl.models.stages`),
instead of SSD's gradient matching with relation terms (built, measured behind it at more
than the training's cost, and reverted: docs/results.md). Departs from DataDAM: no DSA on
the two sides (a window of tens of samples a class, matched once per update), and the
network is the learner, not a fresh random one each iteration.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ccl.condense.datadam import matching_statistics, stage_network
from ccl.memory.buffers import ReservoirBuffer
from ccl.memory.codec import MemoryCodec
from ccl.memory.fillers import learner_features
from ccl.memory.online import OnlineReservoirMemoryPlugin
from ccl.memory.plugin import MemoryNeeds
from ccl.memory.slots import slots_per_class
from ccl.training import now


@dataclass(frozen=True)
class OnlineCondensingSettings:
    """How the summaries are kept and moved. An update costs one no-grad forward of the
    window and `iterations` forward and backward passes of the summaries, every `every`
    steps: at the defaults (a window of 100, 50 summaries of a memory of 100, every 10
    steps of 10 + 10 replayed samples) about 130 sample-passes against the 200 of the
    training steps between two updates."""
    share: float = 0.5        # of the memory's slots kept as summaries; the rest a reservoir of real samples
    every: int = 10           # k: stream steps between two updates of the summaries
    iterations: int = 2       # SGD steps on the summaries an update (the network is fixed within one)
    window: int = 100         # the most recent stream samples the summaries are matched to
    lr_images: float = 1.0    # SGD rate of the summaries' pixels (DataDAM's default)
    p: float = 4.0            # attention exponent (DataDAM's paper)
    sam_weight: float = 1.0   # weight of the attention term (DataDAM's paper)
    mmd_weight: float = 0.01  # weight of the embedding term (DataDAM's lambda)
    # A new class's slots beyond its samples in the minibatch that brings it hold copies of
    # them with this much Gaussian noise (in normalised pixels) until its next samples take
    # them: class-mean matching gives identical images identical gradients, so exact copies
    # would stay copies.
    init_noise: float = 0.1

    def __post_init__(self):
        if not 0 <= self.share <= 1:
            raise ValueError(f"share must be in [0, 1], got {self.share}")
        for name in ("every", "iterations", "window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr_images", "p", "sam_weight", "mmd_weight", "init_noise"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)}")

    def summary_slots(self, mem_size: int) -> int:
        """How many of `mem_size` slots hold summaries."""
        return round(self.share * mem_size)


def summary_loss(real: tuple[list[torch.Tensor], torch.Tensor], summaries: tuple[list[torch.Tensor], torch.Tensor],
                 sam_weight: float, mmd_weight: float) -> torch.Tensor:
    """DataDAM's loss (paper eq. 3 and 4) between class-mean statistics (`matching_statistics`):
    sam_weight * sum_k sum_l ||mean_T a_l - mean_S a_l||^2 + mmd_weight * sum_k ||mean_T phi - mean_S phi||^2.

    Args:
        real, summaries: per intermediate stage the (K, H_l*W_l) class-mean attention maps,
            and the (K, D) class-mean embeddings, of the window's and the summaries' images.
    """
    (real_maps, real_embed), (maps, embed) = real, summaries
    attention = sum(((a - b).pow(2).sum() for a, b in zip(real_maps, maps)), embed.new_zeros(()))
    return sam_weight * attention + mmd_weight * (real_embed - embed).pow(2).sum()


class OnlineCondensingMemoryPlugin(OnlineReservoirMemoryPlugin):
    """An online memory of `mem_size` rows: the first `settings.summary_slots(mem_size)` hold
    summaries, shared out among the classes the stream has brought (`slots_per_class`:
    a new class takes slots from the largest, which keep their first rows), the rest a
    reservoir of real stream samples (Vitter's algorithm R). A class's slots start as
    distinct samples of it: those of the minibatch that brings it, then its next samples,
    one a slot, in the place of placeholder copies. Every `settings.every` steps they move
    to match the window of recent stream samples of their class on the learner (module
    docstring). Replay draws uniformly over all filled rows, summaries and real alike.

    Knows no experience boundary, as `OnlineReservoirMemoryPlugin`: its classes come from
    the stream. Its update_log entries (at each experience's end, for the run's report)
    give the seconds the summaries' updates took since the previous entry, their count and
    the seconds per stream step.

    Args (beside `ReplayMemoryPlugin`'s): settings: `OnlineCondensingSettings`.
    """

    def __init__(self, mem_size: int, mem_batch: int, device: torch.device, codec: MemoryCodec | None = None,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None, needs: MemoryNeeds = MemoryNeeds(),
                 settings: OnlineCondensingSettings = OnlineCondensingSettings()):
        super().__init__(mem_size, mem_batch, device, codec, augment, needs)
        self.settings = settings
        self.summaries = settings.summary_slots(mem_size)  # rows 0..summaries-1
        self.buffer = ReservoirBuffer(mem_size - self.summaries)  # real rows after them
        # Which summary rows hold a distinct stream sample (or its moved image) rather than
        # a placeholder copy: seeding the copies from later samples gives every slot its own
        # start, where copies of a minibatch's few samples would move alike.
        self.seeded = torch.zeros(self.summaries, dtype=torch.bool, device=device)
        self._window: tuple[torch.Tensor, torch.Tensor] | None = None  # (W, C, H, W) images, (W,) labels: a ring
        self.window_count = 0  # stream samples written into the window so far
        self.steps = 0  # stream steps so far
        self._network = None  # a copy of the learner with its stages tapped, built at the first update
        self._since = {"seconds": 0.0, "updates": 0, "steps": 0}  # since the last update_log entry

    # --- the stream ----------------------------------------------------------------------

    def after_update(self, strategy, **kwargs):
        x, y = self._stream  # (B, C, H, W), (B,) as they arrived
        if not self.store.capacity:  # allocated at the first sample, when its shape is known
            self.store.allocate(self.mem_size + 1, x.shape[1:], strategy.mb_output.shape[1])
        rows = self.buffer.rows(y)  # (B,) real row, -1: not kept
        rows = torch.where(rows >= 0, self.summaries + rows, self.mem_size)  # after the summaries; else the spare
        self.store.write(rows, x, y, self._stream_logits.float() if self.record_logits else None)
        known = set(self.classes)
        arrived = sorted({c for c in y.tolist() if c not in known})
        if known and self.summaries and not bool(self.seeded.all()):  # rows are a class's once one came
            self._seed_summaries(x, y)
        self.classes += arrived
        if arrived and self.summaries:
            self._share_summaries(arrived, x, y)
        self._stream_logits = None
        self._remember(x, y)
        self.steps += 1
        self._since["steps"] += 1
        if self.summaries and self.steps % self.settings.every == 0:
            self._condense(strategy.model)
        self.store.filled = self._filled()

    def _filled(self) -> int:
        """Rows in use: every summary once a class has arrived, and the real rows taken."""
        return (self.summaries if self.classes else 0) + min(self.seen, self.mem_size - self.summaries)

    def _seed_summaries(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Write the step's samples (`x`, `y`) of the classes already holding slots into
        their placeholder rows, one sample a row, in row order."""
        images, labels, logits = self.store.allocated
        open_rows = torch.nonzero(~self.seeded).flatten()
        for c in sorted(set(labels[open_rows].tolist()) & set(y.tolist())):
            rows = open_rows[labels[open_rows] == c]
            own = torch.nonzero(y == c).flatten()
            rows, own = rows[:len(own)], own[:len(rows)]
            images[rows] = self.codec.encode(x[own])
            if logits is not None:
                logits[rows] = self._stream_logits[own].float()
            self.seeded[rows] = True

    def _share_summaries(self, arrived: list[int], x: torch.Tensor, y: torch.Tensor) -> None:
        """Re-share the summary slots among the classes seen (`self.classes`, `arrived` last):
        the older classes keep their seeded rows first, the arrived ones start from their
        samples in this minibatch (`x`, `y`), placeholder copies with noise beyond them."""
        if len(self.classes) > self.summaries:
            raise ValueError(f"{self.summaries} summary slots cannot hold {len(self.classes)} classes: raise the "
                             "memory's size or its share of summaries")
        images, labels, logits = self.store.allocated  # logits None unless a strategy reads them
        budget = slots_per_class(self.summaries, self.classes)
        old_labels = labels[:self.summaries]
        kept = []
        for c in self.classes:
            if c not in arrived:
                rows = torch.nonzero(old_labels == c).flatten()
                kept.append(rows[torch.argsort((~self.seeded[rows]).int(), stable=True)][:budget[c]])
        kept = torch.cat(kept) if kept else torch.empty(0, dtype=torch.long, device=self.device)
        new_images, new_labels, new_seeded = [images[kept]], [labels[kept]], [self.seeded[kept]]
        new_logits = [logits[kept]] if logits is not None else []
        for c in arrived:
            own = torch.nonzero(y == c).flatten()  # (n,) its samples in this minibatch
            pick = own[torch.arange(budget[c], device=self.device) % len(own)]  # (budget,) each once, then again
            start = x[pick]  # (budget, C, H, W)
            copies = (torch.arange(budget[c], device=self.device) >= len(own)).float()[:, None, None, None]
            start = start + copies * self.settings.init_noise * torch.randn(start.shape, device=self.device)
            new_images.append(self.codec.encode(start))
            new_labels.append(torch.full((budget[c],), c, dtype=torch.long, device=self.device))
            new_seeded.append(copies.flatten() == 0)
            if logits is not None:
                new_logits.append(self._stream_logits[pick].float())
        images[:self.summaries] = torch.cat(new_images)
        labels[:self.summaries] = torch.cat(new_labels)
        self.seeded = torch.cat(new_seeded)
        if logits is not None:
            logits[:self.summaries] = torch.cat(new_logits)

    def _remember(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Write the step's stream samples into the window's ring."""
        size = self.settings.window
        if self._window is None:
            self._window = (torch.zeros(size, *x.shape[1:], device=self.device),
                            torch.full((size,), -1, dtype=torch.long, device=self.device))
        at = (self.window_count + torch.arange(len(y), device=self.device)) % size  # (B,)
        self._window[0][at], self._window[1][at] = x, y  # a minibatch above the window's size: the last win
        self.window_count += len(y)

    # --- the summaries' update -------------------------------------------------------------

    def _condense(self, learner: torch.nn.Module) -> None:
        """Move the summaries of the classes the window holds toward its samples of them:
        `iterations` SGD steps on DataDAM's loss over a copy of the learner as it is now."""
        start = now(self.device)
        images, labels, logits = self.store.allocated
        window_x, window_y = self._window
        filled = min(self.window_count, self.settings.window)
        window_x, window_y = window_x[:filled], window_y[:filled]
        classes = sorted(set(window_y.tolist()))
        position = torch.full((max(self.classes) + 1,), -1, dtype=torch.long, device=self.device)
        position[torch.tensor(classes, device=self.device)] = torch.arange(len(classes), device=self.device)
        real_group = position[window_y]  # (filled,) every window sample's class is one of `classes`
        rows = torch.nonzero(position[labels[:self.summaries]] >= 0).flatten()  # summaries of those classes
        syn_group = position[labels[rows]]
        network = self._matching_network(learner, window_x.shape[1:])
        attention = self.settings.sam_weight > 0
        with torch.no_grad():
            real = matching_statistics(network, window_x, real_group, len(classes), self.settings.p, attention)
        present = torch.zeros(len(classes), dtype=torch.bool, device=self.device)
        present[syn_group] = True  # a class of the window without a summary (share too small) is left out
        syn = self.codec.decode(images[rows]).detach().requires_grad_(True)  # (n, C, H, W)
        for _ in range(self.settings.iterations):
            stats = matching_statistics(network, syn, syn_group, len(classes), self.settings.p, attention)
            loss = summary_loss(([m[present] for m in real[0]], real[1][present]),
                                ([m[present] for m in stats[0]], stats[1][present]),
                                self.settings.sam_weight, self.settings.mmd_weight)
            (grad,) = torch.autograd.grad(loss, syn)
            with torch.no_grad():
                syn -= self.settings.lr_images * grad
        syn = syn.detach()
        images[rows] = self.codec.encode(syn)
        if logits is not None:  # DER's target: what the learner gives the summary now
            with torch.no_grad():
                logits[rows] = learner_features(learner, self.codec.decode(images[rows]), logits=True).float()
        self._since["seconds"] += now(self.device) - start
        self._since["updates"] += 1

    def _matching_network(self, learner: torch.nn.Module, shape: torch.Size):
        """A copy of the learner with its stages tapped, built once, its weights the learner's now."""
        if self._network is None:
            self._network = stage_network(learner, tuple(shape), self.device)
        self._network.model.load_state_dict(learner.state_dict())
        return self._network

    # --- the run's report and checkpoints ------------------------------------------------

    def after_training_exp(self, strategy, **kwargs):
        super().after_training_exp(strategy, **kwargs)
        since, self._since = self._since, {"seconds": 0.0, "updates": 0, "steps": 0}
        self.update_log[-1].update(seconds=since["seconds"], summary_updates=since["updates"],
                                   summaries=self.summaries,
                                   seconds_per_step=since["seconds"] / since["steps"] if since["steps"] else 0.0)

    def checkpoint(self) -> dict:
        state = super().checkpoint()
        if self._window is not None:
            state["window_images"], state["window_labels"] = self._window
        return {**state, "window_count": self.window_count, "steps": self.steps, "seeded": self.seeded,
                "since": [self._since["seconds"], self._since["updates"], self._since["steps"]]}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.window_count, self.steps = int(state["window_count"]), int(state["steps"])
        self.seeded = state["seeded"].to(self.device) if "seeded" in state else ~self.seeded  # older runs: all seeded
        seconds, updates, steps = state["since"]
        self._since = {"seconds": float(seconds), "updates": int(updates), "steps": int(steps)}
        if "window_images" in state:
            self._window = (state["window_images"].to(self.device), state["window_labels"].to(self.device))
