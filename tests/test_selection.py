import torch

from ccl.condense.selection import herding_order, random_order


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
