"""Learned soft labels (ccl.condense.labels): the meta-gradient lowers the outer loss,
the network is left as it was, and DataDAM's memory stores the learned logits."""
import pytest
import torch

from ccl.condense import Condensed
from ccl.condense.datadam import DataDAMSettings
from ccl.condense.labels import LabelSettings, balanced_cross_entropy, initial_logits, learn_labels, outer_loss


def _problem():
    """Three classes of 2x2 images labelled by a fixed linear teacher; a linear learner
    with BatchNorm (its buffers must survive); six rows to label."""
    torch.manual_seed(0)
    teacher = torch.randn(12, 3)
    real = torch.randn(60, 3, 2, 2)
    real_labels = (real.flatten(1) @ teacher).argmax(1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(12), torch.nn.Linear(12, 3))
    images = torch.randn(6, 3, 2, 2)
    labels = (images.flatten(1) @ teacher).argmax(1)
    return net, images, labels, real, real_labels


@pytest.mark.parametrize("init", ["learner", "hard"])
def test_learned_labels_lower_the_outer_loss_below_their_start(init):
    net, images, labels, real, real_labels = _problem()
    settings = LabelSettings(steps=25, lr=0.2, inner_steps=2, inner_lr=0.5, real_batch=64, init=init)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    start = initial_logits(net, images, labels, settings)
    stats = {}
    learned = learn_labels(images, labels, real, real_labels, net, settings, stats=stats)
    assert learned.shape == (6, 3) and torch.isfinite(learned).all()
    with torch.no_grad():
        loss_start = float(outer_loss(net, start, images, real, real_labels, settings))
        loss_learned = float(outer_loss(net, learned, images, real, real_labels, settings))
    assert loss_learned < loss_start - 0.05, (loss_start, loss_learned)
    assert stats["labels_outer_loss"][1] < stats["labels_outer_loss"][0]
    for k, v in net.state_dict().items():  # weights and BatchNorm's running statistics
        assert torch.equal(v, before[k]), k


def test_the_outer_loss_weighs_every_class_the_same_and_takes_gradient_in_the_logits():
    output = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 0, 1])
    per_row = torch.nn.functional.cross_entropy(output, labels, reduction="none")
    assert float(balanced_cross_entropy(output, labels)) == pytest.approx(float(per_row[0] + per_row[3]) / 2)
    net, images, labels, real, real_labels = _problem()
    logits = torch.zeros(6, 3, requires_grad=True)
    outer_loss(net, logits, images, real, real_labels, LabelSettings()).backward()
    assert logits.grad.abs().sum() > 0


def test_old_rows_join_the_outer_batch():
    """With the context in the outer batch, the labels learn for its classes too: other
    logits than without it."""
    net, images, labels, real, real_labels = _problem()
    keep = real_labels < 2  # the new classes' real data; class 2 only as old rows
    settings = LabelSettings(steps=5, real_batch=64)
    torch.manual_seed(1)
    alone = learn_labels(images, labels, real[keep], real_labels[keep], net, settings)
    torch.manual_seed(1)
    old = (real[~keep][:4], real_labels[~keep][:4])
    with_old = learn_labels(images, labels, real[keep], real_labels[keep], net, settings, context=old)
    assert not torch.allclose(alone, with_old)


def test_label_settings_reject_what_cannot_work():
    for bad in (dict(steps=0), dict(lr=0.0), dict(inner_steps=0), dict(init="noise"), dict(hard_logit=-1.0)):
        with pytest.raises(ValueError):
            LabelSettings(**bad)


def test_datadam_memory_stores_the_learned_labels():
    """The condensing filler with `learned_labels` returns the learned logits as the rows'
    soft targets: they start from the learner's logits and have moved away from them."""
    from ccl.condense import datadam
    from ccl.memory.fillers import CondenseFiller, learner_features
    from ccl.models.convnet import ConvNet
    torch.manual_seed(0)
    real, labels = torch.randn(24, 1, 8, 8), torch.arange(3).repeat_interleave(8)
    learner = ConvNet(num_classes=4, channels=1, image_size=8, width=8, depth=2)
    base = dict(iterations=2, width=8, depth=2, dsa=False, progress_every=1)
    labelling = LabelSettings(steps=3, lr=0.5, real_batch=16)
    settings = DataDAMSettings(**base, learned_labels=True, label_settings=labelling)
    filler = CondenseFiller(torch.device("cpu"), settings, datadam.condense, progress=False)
    context = (torch.randn(2, 1, 8, 8), torch.tensor([3, 3]))
    filled = filler.fill(real, labels, {0: 2, 1: 2, 2: 2}, learner, context)
    assert isinstance(filled, Condensed)
    soft = filled.soft_targets(4)
    assert soft.shape == (6, 4) and torch.isfinite(soft).all()
    logits = learner_features(learner, filled[0], logits=True)
    assert not torch.allclose(soft, logits, atol=1e-3)
    assert (soft - logits).abs().max() <= 3 * 0.5 + 1e-4  # Adam moves a logit at most lr a step
    assert "labels_seconds" in filler.stats
    assert settings.work(3, 6, 8.0, 8) > DataDAMSettings(**base).work(3, 6, 8.0, 8)
