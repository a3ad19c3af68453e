"""Avalanche's own ReplayPlugin with a reservoir buffer: the reference for plain replay."""
from __future__ import annotations

import time

import torch
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.storage_policy import ReservoirSamplingBuffer


class TimedReplayPlugin(ReplayPlugin):
    """ReplayPlugin that records how long each buffer update takes, like DeviceMemoryPlugin."""

    def __init__(self, mem_size: int, batch_size: int, mem_batch: int):
        super().__init__(mem_size=mem_size, batch_size=batch_size, batch_size_mem=mem_batch,
                         storage_policy=ReservoirSamplingBuffer(max_size=mem_size))
        self.update_log: list[dict] = []

    def after_training_exp(self, strategy, **kwargs):
        start = time.perf_counter()
        super().after_training_exp(strategy, **kwargs)
        self.update_log.append({"seconds": time.perf_counter() - start})

    def state(self) -> dict:
        """The buffer's images and labels as tensors, for memory.pt."""
        buffer = self.storage_policy.buffer
        items = [buffer[i] for i in range(len(buffer))]
        images = torch.stack([x for x, *_ in items]) if items else torch.empty(0)
        labels = torch.tensor([int(y) for _, y, *_ in items], dtype=torch.long)
        return {"images": images, "labels": labels, "classes": sorted(set(labels.tolist()))}

    def checkpoint(self) -> dict:
        """Tensors only (loaded with weights_only=True): the buffer and its reservoir keys."""
        return {**self.state(), "weights": self.storage_policy._buffer_weights}

    def restore(self, state: dict) -> None:
        from avalanche.benchmarks.utils.classification_dataset import \
            _make_taskaware_tensor_classification_dataset as tensor_dataset
        images, labels = state["images"], state["labels"]
        # The same dataset type the runner builds experiences from, in the same order.
        self.storage_policy.buffer = tensor_dataset(images, labels, targets=labels, task_labels=0)
        self.storage_policy._buffer_weights = state["weights"]
