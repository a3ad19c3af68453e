"""DataDAM on any network: the rule that finds a network's stages (ccl.models.stages) picks
torchvision ResNet-18's layers and ConvNet's blocks; on ConvNet the hooked path computes
exactly what the built-in path computes; a module called twice is told apart by its call;
condensing on a learner's architecture never touches the learner; misuse is refused."""
from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ccl.condense import datadam
from ccl.condense.datadam import DataDAMSettings, attention_map, class_sums, matching_statistics
from ccl.models import ConvNet, ResNet18
from ccl.models.stages import EMBED, Tap, Tapped, find_stages

CPU = torch.device("cpu")
TINY = DataDAMSettings(iterations=2, real_batch=4, progress_every=1, network="learner")


def cifar_resnet18(num_classes: int = 4) -> nn.Module:
    """torchvision's ResNet-18 adapted to 32x32 images as CIFAR papers do: a 3x3 stem, no max-pool."""
    from torchvision.models import resnet18
    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def names(plan) -> list[str]:
    return [tap.module for tap in plan.stages]


def test_the_rule_picks_resnet18s_four_layers_and_its_pooled_features():
    plan = find_stages(cifar_resnet18(), torch.randn(2, 3, 32, 32))
    assert names(plan) == ["layer1", "layer2", "layer3", "layer4"]  # not layer1.1.relu: the outermost
    assert [tap.size for tap in plan.stages] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert (plan.embedding, plan.embedding_dim) == ("fc", 512)  # avgpool's 1x1 map is the embedding itself
    ours = find_stages(ResNet18(4), torch.randn(2, 3, 32, 32))  # ccl's, with embed()
    assert names(ours) == ["body.layer1", "body.layer2", "body.layer3", "body.layer4"]
    assert (ours.embedding, ours.embedding_dim) == (EMBED, 512)
    # The SAM term matches all but the last stage, which reaches the loss through the embedding.
    assert [tap.module for tap in datadam.stage_network(cifar_resnet18(), (3, 32, 32), CPU).taps] == \
        ["layer1", "layer2", "layer3"]


@pytest.mark.parametrize("size, depth", [(32, 3), (8, 3), (32, 4)])
def test_the_rule_picks_convnets_relu_before_each_pool_as_the_reference_hooks(size, depth):
    net = ConvNet(3, channels=3, image_size=size, width=8, depth=depth)
    plan = find_stages(net, torch.randn(2, 3, size, size))
    assert names(plan) == [f"blocks.{i}.2" for i in range(depth)]  # the ReLUs; the last pooled map is the embedding
    assert all(isinstance(net.get_submodule(n), nn.ReLU) for n in names(plan))
    assert (plan.embedding, plan.embedding_dim) == (EMBED, net.embedding_dim)
    taps = datadam.stage_network(net, (3, size, size), CPU).taps
    assert [tap.module for tap in taps] == [f"blocks.{i}.2" for i in range(depth - 1)]  # as _block_sums


@pytest.mark.parametrize("p", [1.0, 4.0])
def test_on_convnet_the_hooked_stages_give_the_built_in_statistics_and_gradients(p):
    torch.manual_seed(0)
    net = ConvNet(3, channels=3, image_size=8, width=8, depth=3).requires_grad_(False)
    tapped = datadam.stage_network(net, (3, 8, 8), CPU)
    tapped.model.load_state_dict(net.state_dict())  # the same random network
    x = torch.randn(10, 3, 8, 8, requires_grad=True)
    group = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2])
    results = []
    for network, chunk in ((net, 0), (tapped, 0), (tapped, 3)):
        maps, embed = matching_statistics(network, x, group, 3, p, chunk=chunk)
        grad, = torch.autograd.grad(sum(m.sum() for m in maps) + embed.sum(), x)
        results.append((maps + [embed], grad))
    (built_in, built_in_grad), *hooked = results
    assert len(built_in) == 3  # two attention maps and the embedding
    for values, grad in hooked:
        assert len(values) == 3 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(values, built_in))
        assert torch.allclose(grad, built_in_grad, atol=1e-6)


class SharedReLU(nn.Module):
    """One ReLU module called at two resolutions, and a functional global pool before the
    head: the stages are told apart by call, and the last map (not the embedding) is one."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.relu, self.head = nn.ReLU(), nn.Linear(6, 2)

    def forward(self, x):
        x = F.avg_pool2d(self.relu(self.conv1(x)), 2)
        x = self.relu(self.conv2(x))
        return self.head(x.mean((2, 3)))


def test_a_module_called_twice_is_told_apart_by_its_call():
    net = SharedReLU()
    plan = find_stages(net, torch.randn(2, 1, 8, 8))
    assert plan.stages == (Tap("relu", 0, (8, 8)), Tap("relu", 1, (4, 4)))
    assert (plan.embedding, plan.embedding_dim) == ("head", 6)
    x = torch.randn(3, 1, 8, 8)
    caught: list[torch.Tensor] = []
    embedding = Tapped(net, plan.stages, plan.embedding)(x, caught.append)
    first = net.relu(net.conv1(x))
    assert torch.equal(caught[0], first)
    assert torch.equal(caught[1], net.relu(net.conv2(F.avg_pool2d(first, 2))))
    assert torch.equal(embedding, caught[1].mean((2, 3)))


def test_finding_stages_leaves_the_model_as_it_was():
    net = cifar_resnet18()
    net.train()
    net.layer1.eval()  # a user's frozen part keeps its mode
    before = {k: v.clone() for k, v in net.state_dict().items()}
    find_stages(net, torch.randn(2, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BatchNorm statistics too
    assert net.training and not net.layer1.training and not net.layer1[0].bn1.training and net.layer2.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_a_model_without_embedding_is_refused():
    with pytest.raises(ValueError, match="neither an embed"):
        find_stages(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), torch.randn(2, 1, 8, 8))


class SmallCNN(nn.Module):
    """Two stages at 8x8 and 4x4 with BatchNorm, a pooled embedding and a head."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(8, classes)

    def forward(self, x):
        return self.classifier(self.features(x))


def real_data(classes: int = 3, per_class: int = 6, size: int = 8):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return torch.randn(len(labels), 1, size, size, generator=g) + labels[:, None, None, None], labels


def test_condensing_on_a_learners_architecture_matches_its_stages_and_never_touches_it(caplog):
    torch.manual_seed(0)
    model = SmallCNN().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real, labels = real_data()
    stats: dict = {}
    with caplog.at_level(logging.INFO, logger="ccl.condense"):
        images, image_labels = datadam.condense(real, labels, {0: 2, 1: 1, 2: 1}, CPU, TINY, network=model,
                                                progress=False, stats=stats)
    # the learner's cost is said once the first iteration is timed
    assert [r.getMessage().split(": ~")[0] for r in caplog.records] == ["DataDAM classes 0,1,2"]
    assert images.shape == (4, 1, 8, 8) and torch.isfinite(images).all()
    assert image_labels.tolist() == [0, 0, 1, 2]
    assert stats["stages"] == ["features.2", "features.6"] and stats["iterations"] == 2
    assert stats["real_chunk"] == 0  # BatchNorm: one piece, as norm "batch"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_the_learner_network_and_its_settings_are_checked():
    real, labels = real_data()
    with pytest.raises(ValueError, match="needs the learner"):
        datadam.condense(real, labels, {0: 1}, CPU, TINY, progress=False)
    with pytest.raises(ValueError, match="network= is the learner"):
        datadam.condense(real, labels, {0: 1}, CPU, replace(TINY, network="convnet"), network=SmallCNN(),
                         progress=False)
    with pytest.raises(ValueError, match="BatchNorm"):
        datadam.condense(real, labels, {0: 1}, CPU, replace(TINY, real_chunk=4), network=SmallCNN(), progress=False)
    with pytest.raises(ValueError, match="network must be one of convnet, learner"):
        DataDAMSettings(network="resnet")
    assert datadam.real_chunk(TINY, CPU, SharedReLU()) == 32  # no BatchNorm: pieces, as instance norm


def test_a_network_with_one_stage_is_said_to_match_embeddings_alone():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    real, labels = real_data()
    with pytest.warns(RuntimeWarning, match="attention term has nothing to match"):
        datadam.condense(real, labels, {0: 1, 1: 1}, CPU, TINY, network=model, progress=False)


def test_stage_sums_reduce_each_stage_to_class_sums_of_its_attention():
    net = SharedReLU()
    plan = find_stages(net, torch.randn(2, 1, 8, 8))
    tapped = Tapped(net, plan.stages, plan.embedding)
    x, group = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 0, 1, 1])
    maps, embed = datadam._stage_sums(tapped, x, group, 2, 4.0, attention=True)
    caught: list[torch.Tensor] = []
    features = tapped(x, caught.append)
    assert all(torch.allclose(m, class_sums(attention_map(f, 4.0), group, 2)) for m, f in zip(maps, caught))
    assert torch.allclose(embed, class_sums(features, group, 2))
    assert datadam._stage_sums(tapped, x, group, 2, 4.0, attention=False)[0] == []  # DM: no maps
