"""`TrajectoryRecorder`: the learner's training on each experience, for a filler that
matches it (PAD with expert = "learner"). Its own plugin: the memory owns one only when its filler asks
(`Filler.wants_trajectory`) and forwards the hooks it needs."""
from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin
from torch import nn

from ccl.condense.experts import LearnerTrajectory, flat_parameters


class TrajectoryRecorder(SupervisedPlugin):
    """The learner's flat parameters at the experience's start and after each epoch, and
    how far an epoch of its optimiser moves them; freed when the memory takes them."""

    def __init__(self):
        super().__init__()
        self.snapshots: list[torch.Tensor] = []  # (P,) each
        self.steps = 0  # optimiser steps in this experience
        self.epoch_step = 0.0

    def before_training_exp(self, strategy, **kwargs):
        self.snapshots, self.steps = [flat_parameters(strategy.model)], 0

    def before_training_iteration(self, strategy, **kwargs):
        self.steps += 1

    def after_training_epoch(self, strategy, **kwargs):
        if self.snapshots:
            self.snapshots.append(flat_parameters(strategy.model))

    def after_training_exp(self, strategy, **kwargs):
        if self.snapshots:  # lr * steps per epoch / (1 - momentum): the step an epoch takes per unit gradient
            group = strategy.optimizer.param_groups[0]
            epochs = len(self.snapshots) - 1
            self.epoch_step = group["lr"] * self.steps / max(epochs, 1) / (1 - group.get("momentum", 0.0))

    def state(self) -> dict:
        """What has been recorded so far in this experience (for a checkpoint inside it)."""
        return {"snapshots": list(self.snapshots), "steps": self.steps, "epoch_step": self.epoch_step}

    def restore(self, state: dict) -> None:
        self.snapshots = list(state["snapshots"])
        self.steps, self.epoch_step = int(state["steps"]), float(state["epoch_step"])

    def take(self, learner: nn.Module) -> LearnerTrajectory | None:
        """The trajectory recorded over the experience just trained (None: none), handed
        over once: the recorder lets its snapshots go."""
        if not self.snapshots:
            return None
        trajectory = LearnerTrajectory(self.snapshots, learner, self.epoch_step)
        self.snapshots = []
        return trajectory
