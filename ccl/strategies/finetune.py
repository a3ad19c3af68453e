"""Class-balanced finetuning after each experience (EEIL, Castro et al. 2018)."""
from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin

from ccl.training import sgd_epoch


class FinetunePlugin(SupervisedPlugin):
    """After an experience (and after the memory's update, so it goes after the memory
    in the plugin list), `epochs` epochs on the memory alone at a tenth of the learning
    rate, where every seen class has its share of the slots, so that the classifier
    unlearns its bias toward the classes it just saw in bulk."""

    def __init__(self, memory, epochs: int, lr: float, momentum: float, weight_decay: float, batch_size: int):
        super().__init__()
        self.memory, self.epochs, self.batch_size = memory.view, epochs, batch_size  # the memory, read-only
        self.optimiser_settings = dict(lr=lr / 10, momentum=momentum, weight_decay=weight_decay)

    def after_training_exp(self, strategy, **kwargs):
        memory, model = self.memory(), strategy.model
        images, labels = memory.images, memory.labels  # (M, C, H, W), (M,)
        everything = torch.arange(len(labels), device=labels.device)  # (M,)
        optimizer = torch.optim.SGD(model.parameters(), **self.optimiser_settings)
        for _ in range(self.epochs):
            sgd_epoch(model, images, labels, everything, optimizer, self.batch_size, memory.augment)
