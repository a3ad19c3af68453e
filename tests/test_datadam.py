"""DataDAM / DM: golden losses, gradients, convergence on a tiny problem, robustness."""
import math
import os
from dataclasses import replace

import pytest
import torch

from ccl.condense import datadam
from ccl.condense.datadam import (DataDAMSettings, attention_map, block_activations, class_means,
                                  condense, dm_settings, matching_statistics, mmd_loss,
                                  reference_settings, sam_loss)
from ccl.models.convnet import ConvNet

TINY = DataDAMSettings(iterations=20, real_batch=8, width=16, depth=2, progress_every=5)



def blobs(n_per_class: int = 30, classes=(0, 1), size: int = 8, seed: int = 0):
    """Classes that differ in mean colour and in where a bright square sits."""
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for i, c in enumerate(classes):
        x = 0.5 * torch.randn(n_per_class, 3, size, size, generator=g)
        x[:, i % 3] += 1.0
        x[:, :, : size // 2, : size // 2] += 2.0 * (i % 2)
        images.append(x)
        labels.append(torch.full((n_per_class,), c))
    return torch.cat(images), torch.cat(labels)


# --- golden values of the pure functions -----------------------------------------------

def test_attention_map_golden():
    f = torch.tensor([[[[1.0, -2.0]], [[0.0, 1.0]]]])  # (1, 2 channels, 1, 2)
    # p = 2: sum_c |f|^2 = [1, 5] -> / sqrt(26); p = 1: [1, 3] -> / sqrt(10)
    assert torch.allclose(attention_map(f, 2), torch.tensor([[1.0, 5.0]]) / math.sqrt(26))
    assert torch.allclose(attention_map(f, 1), torch.tensor([[1.0, 3.0]]) / math.sqrt(10))
    assert attention_map(torch.zeros(2, 3, 2, 2), 4).abs().sum() == 0  # no NaN for zero maps


def test_class_means_golden():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [10.0, -1.0]])
    means = class_means(x, torch.tensor([0, 0, 1]), 2)
    assert means.tolist() == [[2.0, 1.0], [10.0, -1.0]]


def test_sam_loss_golden_and_ignores_last_block():
    # One channel, two pixels, p = 1: attention = f / ||f||.
    real = torch.tensor([[3.0, 4.0], [1.0, 0.0]]).view(2, 1, 1, 2)  # -> [.6 .8], [1 0]
    syn = torch.tensor([[4.0, 3.0], [2.0, 0.0]]).view(2, 1, 1, 2)  # -> [.8 .6], [1 0]
    group = torch.tensor([0, 1])
    last_real, last_syn = torch.randn(2, 4, 1, 1), torch.randn(2, 4, 1, 1)
    loss = sam_loss([real, last_real], [syn, last_syn], group, group, 2, p=1)
    assert loss.item() == pytest.approx(0.2 ** 2 + 0.2 ** 2)
    # Two intermediate blocks add up.
    loss2 = sam_loss([real, real, last_real], [syn, syn, last_syn], group, group, 2, p=1)
    assert loss2.item() == pytest.approx(2 * 0.08)


def test_mmd_loss_golden_with_unequal_class_sizes():
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0]])  # class means [2 3], [10 0]
    syn = torch.tensor([[2.0, 2.0], [8.0, 1.0]])
    loss = mmd_loss(real, syn, torch.tensor([0, 0, 1]), torch.tensor([0, 1]), 2)
    assert loss.item() == pytest.approx(0 + 1 + 4 + 1)


# --- gradients ------------------------------------------------------------------------

def test_gradient_reaches_images_not_network():
    torch.manual_seed(0)
    net = ConvNet(2, channels=3, image_size=8, width=8, depth=3).requires_grad_(False)
    real = torch.randn(6, 3, 8, 8)
    syn = torch.randn(2, 3, 8, 8, requires_grad=True)
    rg, sg = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 1])
    real_blocks, real_embed = block_activations(net, real)
    syn_blocks, syn_embed = block_activations(net, syn)
    assert [b.shape[-1] for b in syn_blocks] == [8, 4, 2]  # before pooling
    loss = sam_loss(real_blocks, syn_blocks, rg, sg, 2, 4.0) + \
        mmd_loss(real_embed, syn_embed, rg, sg, 2)
    loss.backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 4.0])
def test_iteration_loss_equals_sam_plus_mmd_on_features(p):
    torch.manual_seed(0)
    net = ConvNet(3, channels=3, image_size=8, width=8, depth=3).requires_grad_(False)
    real, syn = torch.randn(9, 3, 8, 8), torch.randn(4, 3, 8, 8)
    rg, sg = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]), torch.tensor([2, 0, 1, 1])
    rb, re = block_activations(net, real)
    sb, se = block_activations(net, syn)
    expected = 2.0 * sam_loss(rb, sb, rg, sg, 3, p) + 0.5 * mmd_loss(re, se, rg, sg, 3)
    r_maps, r_mean = matching_statistics(net, real, rg, 3, p)
    s_maps, s_mean = matching_statistics(net, syn, sg, 3, p)
    assert len(r_maps) == 2  # the last block is left to the MMD term
    got = 0.5 * (r_mean - s_mean).pow(2).sum() + \
        2.0 * sum((a - b).pow(2).sum() for a, b in zip(r_maps, s_maps))
    assert torch.allclose(got, expected, rtol=1e-5)
    assert torch.allclose(attention_map(rb[0], p), attention_map(rb[0].abs(), p))


def test_chunked_real_pass_equals_one_pass():
    torch.manual_seed(0)
    net = ConvNet(3, channels=3, image_size=8, width=8, depth=3).requires_grad_(False)
    x = torch.randn(10, 3, 8, 8)
    g = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2])
    maps, embed = matching_statistics(net, x, g, 3, 4.0)
    for chunk in (1, 3, 4, 10, 99):
        c_maps, c_embed = matching_statistics(net, x, g, 3, 4.0, chunk=chunk)
        assert torch.allclose(c_embed, embed, atol=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(c_maps, maps))
    assert datadam.real_chunk(TINY, torch.device("cpu")) == 32
    assert datadam.real_chunk(replace(TINY, norm="batch"), torch.device("cpu")) == 0
    assert datadam.real_chunk(TINY, torch.device("cuda")) == 0


@pytest.mark.skipif(os.environ.get("CCL_SLOW_TESTS") != "1",
                    reason="torch.compile takes 20 s or more; set CCL_SLOW_TESTS=1")
def test_compiled_blocks_match_eager_values_and_gradients():
    torch.manual_seed(0)
    net = ConvNet(3, channels=3, image_size=8, width=8, depth=3).requires_grad_(False)
    x = torch.randn(10, 3, 8, 8, requires_grad=True)
    g = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2])
    results = []
    for compiled in (False, True):
        maps, embed = matching_statistics(net, x, g, 3, 4.0, compiled=compiled)
        grad, = torch.autograd.grad(sum(m.sum() for m in maps) + embed.sum(), x)
        results.append((maps + [embed], grad))
    (eager, eager_grad), (comp, comp_grad) = results
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(eager, comp))
    assert torch.allclose(eager_grad, comp_grad, atol=1e-5)


# --- the method -----------------------------------------------------------------------

def test_dm_is_datadam_without_sam():
    assert dm_settings().sam_weight == 0
    expected = replace(DataDAMSettings(iterations=7, mmd_weight=1.0), sam_weight=0.0)
    assert dm_settings(iterations=7) == expected
    with pytest.raises(ValueError, match="SAM"):
        dm_settings(sam_weight=1.0)
    real, labels = blobs()
    torch.manual_seed(3)
    a = condense(real, labels, {0: 2, 1: 2}, "cpu", dm_settings(**_tiny_kw()), progress=False)
    torch.manual_seed(3)
    b = condense(real, labels, {0: 2, 1: 2}, "cpu",
                 replace(TINY, sam_weight=0.0, mmd_weight=1.0), progress=False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _tiny_kw():
    names = ("iterations", "real_batch", "width", "depth", "progress_every")
    return {k: getattr(TINY, k) for k in names}


def _embedding_distance(images, labels, real, real_labels, seeds=range(3)):
    """sum_k ||mean syn embedding - mean real embedding||^2 under fixed random nets."""
    total = 0.0
    for seed in seeds:
        torch.manual_seed(100 + seed)
        net = ConvNet(2, channels=3, image_size=8, width=16, depth=2)
        with torch.no_grad():
            total += mmd_loss(net.embed(real), net.embed(images), real_labels, labels, 2).item()
    return total


def test_loss_falls_and_synthetic_embeddings_approach_real(monkeypatch):
    real, labels = blobs(n_per_class=40)
    losses = []
    original = datadam._iteration_loss

    def recording(*args, **kwargs):
        loss = original(*args, **kwargs)
        losses.append(loss.item())
        return loss

    monkeypatch.setattr(datadam, "_iteration_loss", recording)
    torch.manual_seed(0)
    start = torch.randn(6, 3, 8, 8)
    start_labels = torch.tensor([0, 0, 0, 1, 1, 1])
    settings = replace(TINY, iterations=60, init="noise", mmd_weight=1.0, lr_images=1.0)
    images, out_labels = condense(real, labels, {0: 3, 1: 3}, "cpu", settings,
                                  init=(start, start_labels), progress=False)
    assert torch.equal(out_labels, start_labels)
    early, late = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert late < 0.5 * early, (early, late)
    before = _embedding_distance(start, start_labels, real, labels)
    after = _embedding_distance(images, out_labels, real, labels)
    assert after < 0.5 * before, (before, after)


def test_unequal_budgets_order_and_init_from_real():
    # Every real image of class c is the constant c, so synthetic images initialised from
    # real ones show their class; a tiny learning rate keeps them there.
    real = torch.cat([torch.full((n, 1, 8, 8), float(c)) for c, n in ((3, 10), (7, 1), (5, 4))])
    labels = torch.tensor([3] * 10 + [7] * 1 + [5] * 4)
    budget = {7: 3, 3: 4, 5: 1}  # class 7 has fewer real images than its budget
    settings = replace(TINY, iterations=2, lr_images=1e-9, dsa=False)
    images, out = condense(real, labels, budget, "cpu", settings, progress=False)
    assert images.shape == (8, 1, 8, 8) and images.dtype == torch.float32
    assert out.tolist() == [7, 7, 7, 3, 3, 3, 3, 5]
    per_image = images.mean(dim=(1, 2, 3))
    assert torch.allclose(per_image, out.float(), atol=1e-4)


def test_real_batch_larger_than_class_and_batchnorm():
    real, labels = blobs(n_per_class=3)
    settings = replace(TINY, iterations=3, real_batch=16, norm="batch", progress_every=1)
    images, out = condense(real, labels, {1: 2, 0: 1}, "cpu", settings, progress=False)
    assert images.shape == (3, 3, 8, 8) and torch.isfinite(images).all()
    assert out.tolist() == [1, 1, 0]


def test_positions_subset_when_enough_and_cyclic_when_not():
    torch.manual_seed(0)
    counts = torch.tensor([5, 2, 8])
    pos = datadam._positions(counts, 4, 8)
    assert pos.shape == (3, 4)
    assert len(set(pos[0].tolist())) == 4 and pos[0].max() < 5  # a 4-subset of 5
    assert sorted(pos[1].tolist()) == [0, 0, 1, 1]  # both images, twice each
    assert len(set(pos[2].tolist())) == 4 and pos[2].max() < 8


def test_a_huge_step_stays_within_the_real_pixel_range():
    # Before projection, lr 1e38 sent the images to inf; now every step is clamped back into
    # the real images' per-channel range, so a diverging step can never write a blown-up set.
    real, labels = blobs()
    settings = replace(TINY, iterations=20, lr_images=1e38, mmd_weight=1.0, progress_every=2)
    torch.manual_seed(0)
    stats = {}
    images, _ = condense(real, labels, {0: 2, 1: 2}, "cpu", settings, progress=False, stats=stats)
    low = real.transpose(0, 1).flatten(1).amin(1).view(1, 3, 1, 1)
    high = real.transpose(0, 1).flatten(1).amax(1).view(1, 3, 1, 1)
    assert torch.isfinite(images).all() and images.shape == (4, 3, 8, 8)
    assert (images >= low).all() and (images <= high).all()
    assert ((images == low) | (images == high)).float().mean() > 0.5  # the steps did hit the bounds
    assert not stats["stopped"] and stats["iterations"] == 20


def test_nan_loss_is_caught(monkeypatch):
    real, labels = blobs()
    calls = []
    original = datadam._iteration_loss

    def poisoned(*args):
        calls.append(1)
        loss = original(*args)
        return loss * float("nan") if len(calls) > 7 else loss  # iteration 8 goes wrong

    monkeypatch.setattr(datadam, "_iteration_loss", poisoned)
    torch.manual_seed(0)
    with pytest.warns(RuntimeWarning, match="iteration 10"):  # found at the check after it
        images, _ = condense(real, labels, {0: 1, 1: 1}, "cpu", TINY, progress=False)
    assert torch.isfinite(images).all()
    # It is the snapshot of the previous check: the same as stopping after 5 iterations.
    monkeypatch.setattr(datadam, "_iteration_loss", original)
    torch.manual_seed(0)
    expected, _ = condense(real, labels, {0: 1, 1: 1}, "cpu", replace(TINY, iterations=5),
                           progress=False)
    assert torch.equal(images, expected)


def test_nan_real_image_is_dropped():
    real, labels = blobs()
    real[5, 0, 2, 2] = float("nan")
    with pytest.warns(RuntimeWarning, match="dropping 1 real image"):
        images, _ = condense(real, labels, {0: 2, 1: 2}, "cpu", replace(TINY, iterations=4),
                             progress=False)
    assert torch.isfinite(images).all()


def test_progress_bar_and_stats():
    real, labels = blobs()
    stats = {}
    images, _ = condense(real, labels, {0: 1, 1: 1}, "cpu", replace(TINY, iterations=6),
                         progress=True, stats=stats)
    assert torch.isfinite(images).all()
    assert stats["iterations"] == 6 and not stats["stopped"] and math.isfinite(stats["loss"])
    assert stats["match_s"] > 0 and stats["setup_s"] >= 0 and stats["real_chunk"] == 32


@pytest.mark.parametrize("bad, match", [
    ({"iterations": 0}, "iterations"), ({"p": 0}, "p"), ({"norm": "layer"}, "norm"),
    ({"init": "smart"}, "init"), ({"sam_weight": 0, "mmd_weight": 0}, "both 0"),
    ({"momentum": 1.0}, "momentum"), ({"progress_every": 0}, "progress_every"),
    ({"real_chunk": -1}, "real_chunk"), ({"norm": "batch", "real_chunk": 16}, "BatchNorm"),
    ({"lr_images_side": -1}, "lr_images_side"), ({"lr_images_side": 8.5}, "lr_images_side"),
])
def test_settings_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        DataDAMSettings(**bad)


def test_lr_images_side_scales_the_step_by_image_area():
    # lr_images is the rate for lr_images_side x lr_images_side images: 8x8 images under
    # (rate 4, side 16) take exactly the steps of (rate 1, unscaled), and say so in stats.
    real, labels = blobs()
    runs = []
    for lr, side in ((4.0, 16), (1.0, 0), (4.0, 0)):
        settings = replace(TINY, iterations=4, lr_images=lr, lr_images_side=side, progress_every=2)
        stats = {}
        torch.manual_seed(0)
        images, _ = condense(real, labels, {0: 2, 1: 2}, "cpu", settings, progress=False, stats=stats)
        runs.append((images, stats["lr_images"]))
    (scaled, rate), (plain, plain_rate), (unscaled, _) = runs
    assert rate == plain_rate == 1.0
    assert torch.equal(scaled, plain) and not torch.equal(scaled, unscaled)


def test_reference_preset():
    s = reference_settings()
    assert (s.p, s.sam_weight, s.mmd_weight, s.norm) == (1.0, 100.0, 1.0, "batch")


def test_budget_errors():
    real, labels = blobs()
    with pytest.raises(ValueError, match="no real images"):
        condense(real, labels, {0: 1, 9: 1}, "cpu", TINY, progress=False)
    with pytest.raises(ValueError, match="at least one image"):
        condense(real, labels, {0: 0}, "cpu", TINY, progress=False)
    with pytest.raises(ValueError, match="init images"):
        condense(real, labels, {0: 2}, "cpu", TINY, init=(torch.zeros(3, 3, 8, 8), torch.zeros(3)),
                 progress=False)


def test_synthetic_groups_cover_each_prefix_with_equal_class_weight():
    groups = datadam._SyntheticGroups([5, 2], [4, 3], {5: [2, 1, 4, 9], 2: [1]}, torch.device("cpu"))
    # class 5: sizes 4 (its budget), 2, 1; sizes >= the budget or < 1 are ignored
    assert groups.sizes == {5: [4, 2, 1], 2: [3, 1]}
    assert groups.membership.tolist() == [[1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0],
                                          [0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 0, 0]]
    assert groups.target.tolist() == [0, 0, 0, 1, 1]
    assert groups.weight.tolist() == pytest.approx([1 / 3] * 3 + [1 / 2] * 2)
    # Without prefixes: one group per class, the plain class means.
    plain = datadam._SyntheticGroups([5, 2], [4, 3], None, torch.device("cpu"))
    x = torch.randn(7, 6)
    assert torch.allclose(class_means(x, plain.membership, 2), class_means(x, plain.image_class, 2))


def _prefix_distance(images, real, labels, size, nets=8):
    """Mean over random networks of the embedding-mean distance of each class's first
    `size` images to all its real images (no augmentation): how good that subset is."""
    torch.manual_seed(123)
    total = 0.0
    for _ in range(nets):
        net = ConvNet(num_classes=2, channels=3, image_size=8, width=16, depth=2)
        with torch.no_grad():
            for c in (0, 1):
                syn = net.embed(images[c * 6:c * 6 + size]).mean(0)
                total += float((net.embed(real[labels == c]).mean(0) - syn).pow(2).sum())
    return total / nets


def test_nested_condensation_makes_each_prefix_a_matched_set():
    # Condensed for 6 images a class but later cut to 2: with `nested`, the first two are
    # matched as a set of their own and represent the class better than the first two of
    # a set optimised only as a whole; the whole set stays about as good.
    real, labels = blobs(n_per_class=60)
    settings = replace(TINY, iterations=60, sam_weight=0.0, mmd_weight=1.0, dsa=False)
    sets = {}
    for nested in (False, True):
        torch.manual_seed(0)
        sets[nested], _ = condense(real, labels, {0: 6, 1: 6}, "cpu", replace(settings, nested=nested),
                                   prefix_sizes={0: [2], 1: [2]}, progress=False)
    assert _prefix_distance(sets[True], real, labels, 2) < 0.7 * _prefix_distance(sets[False], real, labels, 2)
    assert _prefix_distance(sets[True], real, labels, 6) < 1.5 * _prefix_distance(sets[False], real, labels, 6)


def test_guide_network_is_matched_and_never_trained():
    real, labels = blobs()
    guide = ConvNet(num_classes=2, channels=3, image_size=8, width=16, depth=2)
    before = [p.detach().clone() for p in guide.parameters()]
    settings = replace(TINY, iterations=5, guide_weight=10.0)
    with pytest.raises(ValueError, match="needs a guide"):
        condense(real, labels, {0: 2, 1: 2}, "cpu", settings, progress=False)
    images, _ = condense(real, labels, {0: 2, 1: 2}, "cpu", settings, guide=guide, progress=False)
    assert torch.isfinite(images).all()
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(before, guide.parameters()))


def test_real_epochs_make_the_iterations_follow_the_real_data():
    """Passes over the real images, capped by `iterations`: ten times fewer real images
    condense in ten times fewer iterations (the cost follows the data, as training's)."""
    from ccl.condense.datadam import iteration_budget
    settings = DataDAMSettings(iterations=100, real_batch=64, real_epochs=2)
    assert iteration_budget(settings, 1000) == 32 and iteration_budget(settings, 100) == 4
    assert iteration_budget(settings, 10_000) == 100  # the cap
    assert iteration_budget(DataDAMSettings(iterations=100), 10) == 100  # 0: off
    assert iteration_budget(DataDAMSettings(real_batch=64, real_epochs=0.01), 10) == 1  # at least one
    real, labels = torch.randn(40, 1, 8, 8), torch.arange(2).repeat_interleave(20)
    stats = {}
    condense(real, labels, {0: 2, 1: 2}, "cpu", DataDAMSettings(iterations=50, real_batch=8, real_epochs=1.2,
                                                               width=8, depth=2, progress_every=1),
             progress=False, stats=stats)
    assert stats["iteration_budget"] == stats["iterations"] == 3 and len(stats["loss_curve"]) == 3
    with pytest.raises(ValueError, match="real_epochs"):
        DataDAMSettings(real_epochs=-1)
