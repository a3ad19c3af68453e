import pytest
import torch

from ccl.condense.selection import conditioned_herding_order, herding_order, random_order


def test_herding_picks_the_sample_nearest_the_mean_first():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    order = herding_order(feats)
    assert order[0].item() == 2          # (0.7, 0.7) normalised is the class mean direction
    assert sorted(order.tolist()) == [0, 1, 2]


def test_herding_prefix_tracks_the_mean_better_than_random():
    torch.manual_seed(0)
    feats = torch.randn(200, 16) + 0.5
    f = torch.nn.functional.normalize(feats, dim=1)
    k = 10
    herd = (f[herding_order(feats, k)].mean(0) - f.mean(0)).norm()
    rand = torch.stack([(f[random_order(200, k)].mean(0) - f.mean(0)).norm() for _ in range(20)]).mean()
    assert herd < rand / 2


def test_conditioned_herding_without_synthetic_rows_is_herding():
    torch.manual_seed(0)
    feats = torch.randn(50, 8) + 0.3
    none = torch.zeros(12, dtype=torch.bool)
    assert torch.equal(conditioned_herding_order(feats, feats[:0], none), herding_order(feats, 12))


def test_real_rows_chosen_given_the_synthetic_ones_cover_what_they_miss():
    """A synthetic row off to one side of the class: herding picks the real sample at the
    mean, the conditioned pick is the one that pulls the mean back."""
    real = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])  # the class mean is along x
    synthetic = torch.tensor([[0.6, 0.8]])                        # leans towards +y
    layout = torch.tensor([True, False])
    assert herding_order(real, 1).tolist() == [0]
    assert conditioned_herding_order(real, synthetic, layout).tolist() == [2]


def test_conditioned_prefixes_track_the_class_mean_better_than_synthetic_plus_herding():
    torch.manual_seed(1)
    real = torch.randn(120, 16) + 0.4
    synthetic = torch.randn(4, 16) + 0.4 + torch.randn(16)  # matched, but not exactly at the mean
    layout = torch.zeros(16, dtype=torch.bool)
    layout[[0, 5, 9, 13]] = True
    f, g = (torch.nn.functional.normalize(x, dim=1) for x in (real, synthetic))

    def prefix_gaps(order):
        rows = torch.empty(16, 16)
        rows[layout], rows[~layout] = g, f[order]
        return torch.stack([(rows[:k].mean(0) - f.mean(0)).norm() for k in range(1, 17)])  # (16,)

    conditioned = prefix_gaps(conditioned_herding_order(real, synthetic, layout))
    plain = prefix_gaps(herding_order(real, 12))
    assert conditioned.sum() < 0.8 * plain.sum()
    assert conditioned[-1] < plain[-1]  # the whole set too


def test_conditioned_herding_refuses_a_layout_that_does_not_fit():
    with pytest.raises(ValueError, match="synthetic"):
        conditioned_herding_order(torch.randn(5, 2), torch.randn(2, 2), torch.tensor([True, False, False]))
