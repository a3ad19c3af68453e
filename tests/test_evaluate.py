"""Standalone evaluation: a separable set is learned; results are final-network accuracies."""
from dataclasses import replace

import pytest
import torch

from ccl.condense.evaluate import EvalSettings, accuracy, evaluate_synthetic
from ccl.models.convnet import ConvNet

FAST = EvalSettings(epochs=30, batch=16, networks=2, width=16, depth=2)



def separable(n_per_class: int, seed: int):
    """Three classes told apart by which channel is bright."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(3 * n_per_class, 3, 8, 8, generator=g)
    y = torch.arange(3).repeat_interleave(n_per_class)
    x[torch.arange(len(y)), y] += 1.5
    return x, y


def test_separable_data_gets_high_accuracy():
    torch.manual_seed(0)
    train_x, train_y = separable(4, seed=0)
    test_x, test_y = separable(50, seed=1)
    result = evaluate_synthetic(train_x, train_y, test_x, test_y, 3, "cpu", FAST, progress=False)
    assert len(result["accuracies"]) == 2
    assert result["mean"] > 0.9, result
    assert result["std"] >= 0 and all(0 <= a <= 1 for a in result["accuracies"])


def test_untrained_network_is_near_chance_and_training_changes_it():
    torch.manual_seed(0)
    test_x, test_y = separable(50, seed=1)
    settings = replace(FAST, epochs=1, networks=1, dsa=False, lr=1e-12)
    result = evaluate_synthetic(*separable(4, seed=0), test_x, test_y, 3, "cpu", settings,
                                progress=True)
    assert result["mean"] < 0.8


def test_accuracy_batches_agree():
    torch.manual_seed(0)
    net = ConvNet(3, channels=3, image_size=8, width=8, depth=2)
    x, y = separable(20, seed=2)
    assert accuracy(net, x, y, batch=7) == accuracy(net, x, y, batch=1000)


def test_settings_validation():
    with pytest.raises(ValueError, match="epochs"):
        EvalSettings(epochs=0)
    with pytest.raises(ValueError, match="norm"):
        EvalSettings(norm="layer")
