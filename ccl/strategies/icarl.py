"""iCaRL (Rebuffi et al., CVPR 2017)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ccl.memory.fillers import learner_features
from ccl.strategies.base import STRATEGIES, ReplayLoss, Strategy


class ICaRLPlugin(ReplayLoss):
    """iCaRL (Rebuffi et al., CVPR 2017): a sigmoid cross-entropy over the seen classes'
    outputs whose targets are one-hot for the current experience's classes and, for the
    classes seen before, the sigmoid outputs of the learner as it was when the experience
    began (distillation); at evaluation, the nearest mean of the memory's L2-normalised
    features (iCaRL's NME classifier; the paper's flipped copies are left out). The memory
    is any on-device memory, not only herding's. Soft targets in memory (PAD's learned
    labels) are not used: iCaRL's targets for old classes are already its own
    distillation from the learner of the experience's start, for every row."""

    def __init__(self, memory, settings=None):
        super().__init__(memory, settings)
        self.old: torch.nn.Module | None = None
        self.model: torch.nn.Module | None = None

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        self.strategy = strategy
        old_classes = list(self.memory().classes)
        self.old_classes = torch.tensor(old_classes, dtype=torch.long)
        self.seen = sorted(set(old_classes) | set(strategy.experience.classes_in_this_experience))
        self.old = copy.deepcopy(strategy.model).eval().requires_grad_(False) if old_classes else None

    def __call__(self, output: torch.Tensor, y: torch.Tensor, batch) -> torch.Tensor:
        targets = F.one_hot(y, output.shape[1]).float()  # (B, C)
        if self.old is not None:
            with torch.no_grad():
                old = torch.sigmoid(self.old(self.strategy.mb_x))  # (B, C)
            cols = self.old_classes.to(output.device)
            targets[:, cols] = old[:, cols]
        seen = torch.tensor(self.seen, device=output.device)
        return F.binary_cross_entropy_with_logits(output[:, seen], targets[:, seen])

    def before_eval(self, strategy, **kwargs):
        memory = self.memory()
        if not len(memory.labels):
            return
        learner, images = strategy.model, memory.images
        features = F.normalize(learner_features(learner, images), dim=1)  # (M, d)
        classes = learner_features(learner, images[:1], logits=True).shape[1]
        means = torch.zeros(classes, features.shape[1], device=features.device)  # (C, d)
        present = torch.zeros(len(means), dtype=torch.bool, device=features.device)
        means.index_add_(0, memory.labels, features)
        present[memory.labels] = True
        means = F.normalize(means, dim=1)
        self.model, strategy.model = learner, NearestMean(learner, means, present)

    def after_eval(self, strategy, **kwargs):
        if self.model is not None:
            strategy.model, self.model = self.model, None


class NearestMean(torch.nn.Module):
    """Scores -||f(x) - mean_c||^2 on L2-normalised features (larger is nearer); classes
    without a mean score -1e4 (finite, so the evaluation loss stays a number)."""

    def __init__(self, learner: torch.nn.Module, means: torch.Tensor, present: torch.Tensor):
        super().__init__()
        self.learner, self.means, self.present = learner, means, present

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.learner.embed(x), dim=1)  # (B, d)
        scores = -torch.cdist(features, self.means) ** 2  # (B, C)
        return scores.masked_fill(~self.present, -1e4)


STRATEGIES.register("icarl", "iCaRL: distillation to the previous learner, nearest-mean-of-memory classifier (2017)")(
    Strategy(ICaRLPlugin))
