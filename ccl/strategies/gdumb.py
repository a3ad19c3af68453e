"""GDumb (Prabhu et al., ECCV 2020): at every step a fresh learner trained on the memory alone."""
from __future__ import annotations

from avalanche.core import SupervisedPlugin

from ccl.strategies.base import STRATEGIES, Strategy
from ccl.training import reinitialise


class GDumbPlugin(SupervisedPlugin):
    """Before each experience trains, the memory takes its new classes (its filler sees the
    experience's real images and the learner as it stands), the learner is re-initialised
    and its optimiser reset, and the experience's data is swapped for the memory's images.

    Departs from Avalanche's `GDumbPlugin`, which keeps its own class-balanced buffer on
    the CPU and fills it greedily from the stream: here the memory is any on-device
    class-balanced memory, real or condensed, as the condensation papers evaluate.
    The memory's images pass through `augment` (DSA under `--mem-augment dsa`) as the
    learner trains on them, with their hard labels: soft targets (PAD's learned labels)
    are not used yet, as Avalanche's dataset of the memory carries no per-row target."""

    def __init__(self, memory, settings=None):
        super().__init__()
        self.memory = memory

    def before_train_dataset_adaptation(self, strategy, **kwargs):
        new = sorted(c for c in strategy.experience.classes_in_this_experience if c not in self.memory.classes)
        self.memory.update(new, strategy.model)
        reinitialise(strategy.model)
        strategy.optimized_param_id = None  # a fresh learner: Avalanche resets the optimiser too

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        from avalanche.benchmarks.utils.classification_dataset import \
            _make_taskaware_tensor_classification_dataset as tensor_dataset
        images = self.memory.codec.decode(self.memory.images).cpu()
        labels = self.memory.labels.cpu()
        strategy.adapted_dataset = tensor_dataset(images, labels, targets=labels, task_labels=0)

    def before_forward(self, strategy, **kwargs):
        if self.memory.augment is not None:
            strategy.mbatch[0] = self.memory.augment(strategy.mbatch[0])


STRATEGIES.register("gdumb", "GDumb: at each step a fresh learner trained on the memory alone (2020)")(
    Strategy(GDumbPlugin, needs_replay=False, memory_alone=True))
