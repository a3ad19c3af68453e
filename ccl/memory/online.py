"""The on-device memories of an online stream that hides experience boundaries
(`ccl run --online`): they learn what they know from the stream minibatches alone.

Avalanche's online API (`split_online_stream`, `OnlineCLExperience`) cuts the stream into
one experience a minibatch and marks the boundaries on each; ccl keeps the scenario's
experiences and trains them with one epoch in minibatches of the online size instead (a
step per experience costs the template's whole experience set-up: new data loader,
optimiser update, plugin hooks), and hides the boundaries by giving the memory and the
strategy nothing that changes at them: the memory below learns its classes from the
stream, and the strategies that run online (`Strategy.online`) read no other class list.
"""
from __future__ import annotations

import torch

from ccl.memory.plugin import ReservoirMemoryPlugin


class OnlineReservoirMemoryPlugin(ReservoirMemoryPlugin):
    """A reservoir memory (Vitter's algorithm R, or CBRS: its `buffer`) that is told no
    experience boundary. Its classes, what ER-ACE's mask and the first replay read, are
    the classes its stream minibatches have brought so far, learned after each step, as
    mammoth's online ER-ACE gathers `seen_so_far` from its batches; so a strategy that
    replays "from the second experience on" (`MemoryNeeds.first_experience` False)
    replays from the second step on, as mammoth's `task_free` does. An experience's end
    changes nothing here: it only logs what the memory holds, for the run's evaluation.

    Costs one copy of each minibatch's labels to the host a step (CBRS makes it anyway).
    """

    def after_update(self, strategy, **kwargs):
        labels = self._stream[1]  # (B,) the step's stream samples', as they arrived
        super().after_update(strategy, **kwargs)
        seen = set(self.classes)
        self.classes += sorted({c for c in labels.tolist() if c not in seen})

    def after_training_exp(self, strategy, **kwargs):
        logged = {c for entry in self.update_log for c in entry["new_classes"]}
        counts = torch.bincount(self.labels, minlength=max(self.classes, default=-1) + 1).tolist()
        self.update_log.append({"seconds": 0.0, "new_classes": [c for c in self.classes if c not in logged],
                                "seen": self.seen, "per_class": {str(c): counts[c] for c in self.classes}})
