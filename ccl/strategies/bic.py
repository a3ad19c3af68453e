"""BiC, bias correction (Wu et al., CVPR 2019)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ccl.memory.fillers import learner_features
from ccl.strategies.base import STRATEGIES, ReplayLoss, Strategy


@dataclass(frozen=True)
class BiCSettings:
    temperature: float = 2.0  # of the distillation to the previous learner
    bias_steps: int = 200     # full-batch steps fitting the bias layer on the memory
    bias_lr: float = 0.05

    def __post_init__(self):
        if self.temperature <= 0 or self.bias_steps < 0 or self.bias_lr <= 0:
            raise ValueError("temperature and bias_lr must be positive, bias_steps not negative")


class BiCPlugin(ReplayLoss):
    """Cross-entropy over stream and memory samples, and a distillation (softened by
    `temperature`) of the old classes' logits to the bias-corrected learner of the
    experience's start, weighted lambda = old / seen classes: (1 - lambda) CE + lambda KD.
    After the experience, a bias layer (alpha, beta applied to the new classes' logits)
    is fitted on the class-balanced memory with the learner frozen; it corrects the
    learner at evaluation and in the next experience's teacher.

    Departs from the paper and Avalanche's `BiCPlugin` (which keeps its own buffer and
    bias layers inside the model): the bias layer is fitted on the on-device memory, which
    the learner has trained on, instead of a held-out split of stream and memory, so any
    memory (real or condensed) serves; one bias layer, for the latest classes, at a time.
    Soft targets in memory (PAD's learned labels) are not used: BiC distils from its own
    previous learner, and its bias layer is fitted to the memory's hard labels."""

    def __init__(self, memory, settings: BiCSettings = BiCSettings()):
        super().__init__(memory, settings)
        self.teacher: torch.nn.Module | None = None
        self.bias = (1.0, 0.0, [])  # alpha, beta, the classes they correct
        self.learner: torch.nn.Module | None = None

    def checkpoint(self) -> dict:
        """The bias layer carried to the next experience's teacher and evaluation."""
        alpha, beta, classes = self.bias
        return {"alpha": alpha, "beta": beta, "classes": list(classes)}

    def restore(self, state: dict) -> None:
        self.bias = (float(state["alpha"]), float(state["beta"]), [int(c) for c in state["classes"]])

    def before_training_exp(self, strategy, **kwargs):
        self.strategy = strategy
        self.old = list(self.memory().classes)
        self.new = sorted(set(strategy.experience.classes_in_this_experience) - set(self.old))
        self.teacher = None
        if self.old:
            self.teacher = BiasCorrected(copy.deepcopy(strategy.model), *self.bias).eval().requires_grad_(False)

    def __call__(self, output: torch.Tensor, y: torch.Tensor, batch) -> torch.Tensor:
        ce = F.cross_entropy(output, y)
        if self.teacher is None:
            return ce
        old, t = torch.tensor(self.old, device=output.device), self.settings.temperature
        with torch.no_grad():
            target = F.softmax(self.teacher(self.strategy.mb_x)[:, old] / t, dim=1)
        kd = F.kl_div(F.log_softmax(output[:, old] / t, dim=1), target, reduction="batchmean") * t * t
        lam = len(self.old) / (len(self.old) + len(self.new))
        return (1 - lam) * ce + lam * kd

    def after_training_exp(self, strategy, **kwargs):
        """Fit alpha and beta on the memory (after its update: this plugin goes after it)."""
        memory = self.memory()
        if not self.old or not len(memory.labels):
            return
        with torch.no_grad():
            logits = learner_features(strategy.model, memory.images, logits=True)
        cols = torch.tensor(self.new, device=logits.device)
        alpha = torch.ones((), device=logits.device, requires_grad=True)
        beta = torch.zeros((), device=logits.device, requires_grad=True)
        optimiser = torch.optim.SGD([alpha, beta], lr=self.settings.bias_lr, momentum=0.9)
        for _ in range(self.settings.bias_steps):
            corrected = logits.index_copy(1, cols, alpha * logits[:, cols] + beta)
            loss = F.cross_entropy(corrected, memory.labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        self.bias = (alpha.item(), beta.item(), self.new)

    def before_eval(self, strategy, **kwargs):
        self.learner, strategy.model = strategy.model, BiasCorrected(strategy.model, *self.bias)

    def after_eval(self, strategy, **kwargs):
        if self.learner is not None:
            strategy.model, self.learner = self.learner, None


class BiasCorrected(torch.nn.Module):
    """The learner with alpha * logit + beta on `classes`' logits."""

    def __init__(self, learner: torch.nn.Module, alpha: float, beta: float, classes: list[int]):
        super().__init__()
        self.learner, self.alpha, self.beta, self.classes = learner, alpha, beta, list(classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.learner(x)
        if not self.classes:
            return out
        cols = torch.tensor(self.classes, device=out.device)
        return out.index_copy(1, cols, self.alpha * out[:, cols] + self.beta)


STRATEGIES.register("bic", "BiC: distillation to the previous learner and a bias layer for the newest "
                    "classes fitted on the memory (2019)")(Strategy(BiCPlugin, BiCSettings))
