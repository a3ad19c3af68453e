"""PAD / MTT: scheduler, EL2N, deep-parameter mask, matching loss, condense contract.

Everything is tiny (8x8 or 16x16 images, width-8 networks) so the file runs in seconds
on a CPU.
"""
from __future__ import annotations

import logging
import math
import re
import warnings

import pytest
import torch

import ccl.condense.experts as experts
from ccl.condense import announce_cost, cost_line
import ccl.condense.pad as pad
from ccl.condense.el2n import el2n_scores, order_by_difficulty
from ccl.condense.experts import (ExpertSchedule, kept_indices, make_network, parameter_count,
                                  scheduled_fraction, train_experts)
from ccl.condense.pad import (FunctionalStudent, PADSettings, condense, default_alpha,
                              deep_parameter_mask, deep_parameter_start, match_once, mtt_settings,
                              student_plan, trajectory_matching_loss, unroll_student)
from ccl.models.convnet import ConvNet, fitting_depth


def tiny(**changes) -> PADSettings:
    """Settings small enough for a CPU test: width 8, depth 2, a few epochs and steps."""
    base = dict(iterations=3, syn_steps=2, expert_epochs=1, max_start_epoch=1,
                expert_train_epochs=3, num_experts=2, expert_batch=16, lr_img=1.0,
                lr_lr=1e-7, width=8, depth=2, score_networks=1, score_epochs=1,
                progress_every=1)
    return PADSettings(**{**base, **changes})


def two_class_data(n_per_class: int = 12, size: int = 8, classes: tuple[int, int] = (3, 7)):
    real = torch.randn(2 * n_per_class, 3, size, size)  # (N, 3, H, W)
    labels = torch.tensor([classes[0]] * n_per_class + [classes[1]] * n_per_class)
    return real, labels


# --- scheduler --------------------------------------------------------------------------

@pytest.mark.parametrize("epoch, window", [
    (0, (0.0, 0.75)), (10, (0.0, 0.875)), (20, (0.0, 1.0)), (30, (0.0, 1.0)), (40, (0.0, 1.0)),
    (41, (0.1, 1.0)), (60, (0.1, 1.0)), (61, (0.2, 1.0)), (99, (0.2, 1.0)),
])
def test_scheduled_fraction_reference_100_epochs(epoch, window):
    start, stop = scheduled_fraction(epoch, 100, ExpertSchedule())
    assert start == pytest.approx(window[0]) and stop == pytest.approx(window[1])


def test_schedule_scales_with_expert_length():
    schedule = ExpertSchedule()
    assert schedule.phase_epochs(10) == (2, 4, 6)
    assert scheduled_fraction(1, 10, schedule) == pytest.approx((0.0, 0.875))
    assert scheduled_fraction(5, 10, schedule) == pytest.approx((0.1, 1.0))
    assert scheduled_fraction(7, 10, schedule) == pytest.approx((0.2, 1.0))


def test_kept_indices_use_each_class_count():
    order = {0: torch.arange(8), 1: torch.arange(100, 104)}  # 8 and 4 samples, easiest first
    first = kept_indices(0, 100, order, ExpertSchedule())  # keep the easiest 75%
    assert first.tolist() == list(range(6)) + [100, 101, 102]
    late = kept_indices(61, 100, order, ExpertSchedule())  # drop the easiest 20%
    assert late.tolist() == list(range(1, 8)) + [100, 101, 102, 103]


def test_train_experts_follows_the_schedule(monkeypatch):
    seen = []
    monkeypatch.setattr(experts, "sgd_epoch", lambda net, x, y, idx, *a: seen.append(idx.numel()))
    real, labels = two_class_data(n_per_class=20, classes=(0, 1))
    order = {0: torch.arange(20), 1: torch.arange(20, 40)}
    settings = tiny(expert_train_epochs=10, num_experts=1)
    (trajectory,) = train_experts(real, labels, 2, "cpu", settings, order)
    assert len(trajectory) == 11
    expected = [2 * kept_indices(e, 10, {0: torch.arange(20)}, settings.schedule).numel()
                for e in range(10)]
    assert seen == expected == [30, 34, 40, 40, 40, 36, 36, 32, 32, 32]


def test_train_experts_trajectory_layout():
    torch.manual_seed(0)
    real, labels = two_class_data(classes=(0, 1))
    settings = tiny(scheduler=False)
    trajectories = train_experts(real, labels, 2, "cpu", settings)
    total = parameter_count(settings, 2, (3, 8, 8))
    assert len(trajectories) == settings.num_experts
    for trajectory in trajectories:
        assert len(trajectory) == settings.expert_train_epochs + 1
        assert all(v.shape == (total,) and torch.isfinite(v).all() for v in trajectory)
        assert not torch.equal(trajectory[0], trajectory[-1])  # the expert moved
    assert not torch.equal(trajectories[0][0], trajectories[1][0])  # independent inits


def test_scheduler_on_needs_an_order():
    real, labels = two_class_data(classes=(0, 1))
    with pytest.raises(ValueError, match="order_by_difficulty"):
        train_experts(real, labels, 2, "cpu", tiny(scheduler=True))


# --- EL2N -------------------------------------------------------------------------------

def test_el2n_ranks_mislabelled_samples_hardest():
    torch.manual_seed(0)
    n, flipped = 40, 4
    means = torch.tensor([1.0, -1.0]).repeat_interleave(n)  # two separable blobs
    real = means.view(-1, 1, 1, 1) + 0.5 * torch.randn(2 * n, 1, 8, 8)  # (80, 1, 8, 8)
    labels = torch.arange(2).repeat_interleave(n)
    wrong = torch.cat([torch.arange(flipped), n + torch.arange(flipped)])  # 4 per class
    labels[wrong] = 1 - labels[wrong]
    settings = tiny(score_networks=2, score_epochs=5, expert_lr=0.05, dsa=False, depth=1)
    scores = el2n_scores(real, labels, 2, "cpu", settings)
    assert scores.shape == (2 * n,) and torch.isfinite(scores).all()
    is_wrong = torch.zeros(2 * n, dtype=torch.bool)
    is_wrong[wrong] = True
    assert scores[is_wrong].min() > scores[~is_wrong].max()
    order = order_by_difficulty(scores, labels)
    for c, idx in order.items():
        assert sorted(idx.tolist()) == torch.nonzero(labels == c).flatten().tolist()
        assert is_wrong[idx[-flipped:]].all()  # the flipped ones come last (hardest)
        assert (scores[idx].diff() >= 0).all()  # easy to hard


# --- deep-parameter matching --------------------------------------------------------------

def test_convnet3_parameter_count_and_deep_mask():
    net = ConvNet(10)  # CIFAR-10: 32x32x3, width 128, depth 3
    sizes = [sum(p.numel() for p in block.parameters()) for block in net.blocks]
    cumulative = [sum(sizes[:i + 1]) for i in range(3)]
    assert cumulative == [3_840, 151_680, 299_520]
    assert sum(p.numel() for p in net.classifier.parameters()) == 20_490
    total = parameter_count(PADSettings(), 10, (3, 32, 32))
    assert total == 320_010
    # The flat order (module.parameters()) runs input to output.
    spec = FunctionalStudent(net).spec
    assert spec[0][0] == "blocks.0.0.weight" and spec[-1][0] == "classifier.bias"
    for alpha in (0.0, 0.25, 0.3, 0.5):
        mask = deep_parameter_mask(total, alpha)
        assert int(mask.sum()) == total - math.floor(alpha * total)
        assert not mask[:deep_parameter_start(total, alpha)].any() and mask[-1]
    assert deep_parameter_start(total, 0.5) == 160_005
    assert deep_parameter_start(total, 0.25) == 80_002


@pytest.mark.parametrize("ipc, alpha", [(1, 0.0), (9, 0.0), (10, 0.5), (33, 0.5), (49, 0.5),
                                        (50, 0.25), (100, 0.25)])
def test_default_alpha_at_most_rule(ipc, alpha):
    assert default_alpha(ipc) == alpha


# --- loss, student, gradients -----------------------------------------------------------

def test_matching_loss_golden():
    student_end = torch.tensor([1.0, 2.0, 3.0, 4.0])
    start = torch.zeros(4)
    target = torch.ones(4)
    # keep_from 2: numerator (3-1)^2 + (4-1)^2 = 13, denominator 1 + 1 = 2
    assert trajectory_matching_loss(student_end, start, target, 2).item() == 6.5
    assert trajectory_matching_loss(student_end, start, target).item() == pytest.approx(14 / 4)


def _student_setup():
    torch.manual_seed(0)
    settings = tiny()
    student = FunctionalStudent(make_network(settings, 2, (3, 8, 8), "cpu"))
    start = torch.nn.utils.parameters_to_vector(make_network(settings, 2, (3, 8, 8), "cpu").parameters())
    target = start + 0.01 * torch.randn_like(start)
    images = torch.randn(6, 3, 8, 8, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    lr = torch.tensor(0.01, requires_grad=True)
    return settings, student, start.detach(), target.detach(), images, labels, lr


def test_functional_student_matches_module():
    settings, student, start, _, images, _, _ = _student_setup()
    net = make_network(settings, 2, (3, 8, 8), "cpu")
    torch.nn.utils.vector_to_parameters(start, net.parameters())
    torch.testing.assert_close(student(start, images), net(images))


def test_loss_is_one_without_student_steps():
    settings, student, start, target, images, labels, lr = _student_setup()
    end = unroll_student(student, start, images, labels, lr, [])
    assert trajectory_matching_loss(end, start, target, 100).item() == 1.0


def test_gradients_reach_images_and_lr():
    settings, student, start, target, images, labels, lr = _student_setup()
    loss = match_once(student, [[start, target]], images, labels, lr,
                      tiny(max_start_epoch=0, expert_train_epochs=1, syn_steps=3, batch_syn=4),
                      keep_from=50)
    loss.backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert lr.grad is not None and torch.isfinite(lr.grad) and lr.grad != 0


@pytest.mark.parametrize("dsa", [False, True])
def test_recomputed_unroll_gives_the_full_graph_gradients(dsa):
    settings, student, start, target, images, labels, lr = _student_setup()
    torch.manual_seed(3)
    plan = student_plan(6, 4, 5, settings.dsa_settings if dsa else None, "cpu")  # 2 passes
    results = []
    for recompute in (False, True):
        images.grad = lr.grad = None
        end = unroll_student(student, start, images, labels, lr, plan, recompute)
        trajectory_matching_loss(end, start, target, keep_from=50).backward()
        results.append((end.detach(), images.grad.clone(), lr.grad.clone()))
    (end_full, images_full, lr_full), (end_re, images_re, lr_re) = results
    torch.testing.assert_close(end_re, end_full)
    torch.testing.assert_close(images_re, images_full, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(lr_re, lr_full, rtol=1e-4, atol=1e-7)
    assert images_full.abs().sum() > 0 and lr_full != 0


def test_start_epoch_is_drawn_between_min_and_max(monkeypatch):
    starts = []

    def record_start(student, start, *args, **kwargs):
        starts.append(int(start[0]))
        return start + 1.0

    monkeypatch.setattr(pad, "unroll_student", record_start)
    trajectory = [torch.full((4,), float(epoch)) for epoch in range(6)]  # theta_e = e
    settings = tiny(min_start_epoch=2, max_start_epoch=3, expert_epochs=1, expert_train_epochs=5)
    images, labels = torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)
    torch.manual_seed(0)
    for _ in range(40):
        match_once(None, [trajectory], images, labels, torch.tensor(0.01), settings, keep_from=0)
    assert set(starts) == {2, 3}


# --- settings ---------------------------------------------------------------------------

def test_settings_validation():
    with pytest.raises(ValueError, match="expert_train_epochs"):
        PADSettings(max_start_epoch=20, expert_epochs=2, expert_train_epochs=21)
    with pytest.raises(ValueError, match="min_start_epoch"):
        PADSettings(min_start_epoch=3, max_start_epoch=2)
    with pytest.raises(ValueError, match="alpha"):
        PADSettings(alpha=1.0)
    with pytest.raises(ValueError, match="add_end"):
        PADSettings(schedule_add_end=0.5, schedule_rm_first=0.4)
    with pytest.raises(ValueError, match="norm"):
        PADSettings(norm="layer")
    with pytest.raises(ValueError, match="scheduler"):
        mtt_settings(scheduler=True)


def test_mtt_is_pad_without_scheduler_and_alpha_zero():
    assert mtt_settings(iterations=7) == PADSettings(iterations=7, scheduler=False, alpha=0.0)
    real, labels = two_class_data()
    outputs = []
    for settings in (mtt_settings(**_tiny_kw()), tiny(scheduler=False, alpha=0.0)):
        torch.manual_seed(1)
        outputs.append(condense(real, labels, {3: 2, 7: 2}, "cpu", settings, progress=False))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], rtol=0, atol=0)
    assert torch.equal(outputs[0][1], outputs[1][1])


def _tiny_kw() -> dict:
    settings = tiny()
    return {f: getattr(settings, f) for f in settings.__dataclass_fields__
            if f not in ("scheduler", "alpha")}


# --- condense contract ------------------------------------------------------------------

def test_condense_budget_shapes_and_finite():
    torch.manual_seed(0)
    real, labels = two_class_data(size=16)
    stats: dict = {}
    images, out_labels = condense(real, labels, {7: 3, 3: 2}, "cpu", tiny(), progress=False,
                                  stats=stats)
    assert images.shape == (5, 3, 16, 16) and images.dtype == torch.float32
    assert out_labels.tolist() == [7, 7, 7, 3, 3] and out_labels.dtype == torch.long
    assert torch.isfinite(images).all()
    assert set(stats) >= {"score_s", "experts_s", "match_s", "alpha", "syn_lr"}
    assert stats["score_s"] > 0 and stats["iterations"] == 3 and not stats["stopped"]


def test_train_experts_prefix_is_the_start_of_the_whole_trajectory():
    real, labels = two_class_data(n_per_class=20, classes=(0, 1))
    order = {0: torch.arange(20), 1: torch.arange(20, 40)}
    settings = tiny(expert_train_epochs=10, num_experts=1)
    torch.manual_seed(0)
    (whole,) = train_experts(real, labels, 2, "cpu", settings, order)
    torch.manual_seed(0)
    (prefix,) = train_experts(real, labels, 2, "cpu", settings, order, epochs=4)
    assert len(prefix) == 5 and all(torch.equal(a, b) for a, b in zip(prefix, whole[:5]))  # the same schedule
    with pytest.raises(ValueError, match="1..expert_train_epochs"):
        train_experts(real, labels, 2, "cpu", settings, order, epochs=11)


def test_condense_from_given_experts_is_condense_that_trains_them():
    real, labels = two_class_data(size=16)  # classes 3 and 7: the networks see them as 0 and 1
    settings, budget = tiny(scheduler=True, expert_train_epochs=4), {3: 2, 7: 2}
    torch.manual_seed(0)
    trained = condense(real, labels, budget, "cpu", settings, progress=False)
    torch.manual_seed(0)
    local = (labels == 7).long()
    order = order_by_difficulty(el2n_scores(real, local, 2, "cpu", settings), local)
    experts = train_experts(real, local, 2, "cpu", settings, order)
    stats: dict = {}
    given = condense(real, labels, budget, "cpu", settings, progress=False, stats=stats, experts=experts)
    assert torch.equal(given[0], trained[0]) and torch.equal(given[1], trained[1])
    assert stats["score_s"] == stats["experts_s"] == 0.0  # none trained
    # matching reads no epoch past max_start_epoch + expert_epochs (2 here): a prefix does as well
    prefix = [trajectory[:3] for trajectory in experts]
    runs = []
    for cached in (experts, prefix):
        torch.manual_seed(1)
        runs.append(condense(real, labels, budget, "cpu", settings, progress=False, experts=cached)[0])
    assert torch.equal(*runs)


def test_given_experts_that_do_not_fit_are_refused():
    real, labels = two_class_data(size=16)
    settings = tiny(scheduler=False)
    three_classes = train_experts(real, torch.arange(24) % 3, 3, "cpu", settings)  # another output layer
    with pytest.raises(ValueError, match="does not fit"):
        condense(real, labels, {3: 2, 7: 2}, "cpu", settings, progress=False, experts=three_classes)
    short = [t[:2] for t in train_experts(real, (labels == 7).long(), 2, "cpu", settings)]  # needs 3 vectors
    with pytest.raises(ValueError, match="at least 3 vectors"):
        condense(real, labels, {3: 2, 7: 2}, "cpu", settings, progress=False, experts=short)


def test_fixed_images_join_the_minibatches_without_gradient():
    _, student, start, target, images, labels, lr = _student_setup()
    settings = tiny(max_start_epoch=0, expert_train_epochs=1, syn_steps=3, batch_syn=4)
    results = []
    for fixed in (False, True):
        images.grad = None
        torch.manual_seed(5)  # the same start epoch, minibatches and draws both times
        if fixed:  # the last two images as context: same loss, no gradient for them
            synthetic = images[:4].detach().requires_grad_(True)
            loss = match_once(student, [[start, target]], synthetic, labels[:4], lr, settings, 50,
                              fixed=(images[4:].detach(), labels[4:]))
            loss.backward()
            results.append((loss.detach(), synthetic.grad))
        else:
            loss = match_once(student, [[start, target]], images, labels, lr, settings, 50)
            loss.backward()
            results.append((loss.detach(), images.grad[:4]))
    (loss_all, grad_all), (loss_fixed, grad_fixed) = results
    torch.testing.assert_close(loss_fixed, loss_all)
    torch.testing.assert_close(grad_fixed, grad_all)
    assert grad_fixed.abs().sum() > 0


def test_warns_when_the_student_takes_far_more_steps_than_the_expert():
    real, labels = two_class_data(n_per_class=12)  # 24 images, batch 16: 2 expert steps per epoch
    with pytest.warns(RuntimeWarning, match="ill-posed"):
        condense(real, labels, {3: 1, 7: 1}, "cpu", tiny(syn_steps=5, iterations=1), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        condense(real, labels, {3: 1, 7: 1}, "cpu", tiny(syn_steps=4, iterations=1), progress=False)


def test_context_joins_the_experts_balanced_and_is_not_returned(monkeypatch):
    torch.manual_seed(0)
    real, labels = two_class_data(n_per_class=12)
    context = (torch.randn(6, 3, 8, 8), torch.tensor([1, 1, 1, 5, 5, 5]))
    kept = context[0].clone()
    seen = {}

    def recording_train_experts(images, expert_labels, num_classes, *args):
        seen.update(counts=torch.bincount(expert_labels, minlength=num_classes).tolist(), k=num_classes)
        return experts.train_experts(images, expert_labels, num_classes, *args)

    monkeypatch.setattr(pad, "train_experts", recording_train_experts)
    stats: dict = {}
    images, out_labels = condense(real, labels, {7: 2, 3: 2}, "cpu", tiny(), progress=False,
                                  stats=stats, context=context)
    # Outputs: the budget's classes 7, 3, then the context's 1, 5; each context class
    # repeated to the real classes' count (12 = 3 images x 4).
    assert seen == {"counts": [12, 12, 12, 12], "k": 4}
    assert out_labels.tolist() == [7, 7, 3, 3] and images.shape == (4, 3, 8, 8)
    assert torch.isfinite(images).all() and torch.equal(context[0], kept)
    assert stats["context_images"] == 6


def test_context_must_be_other_finite_classes():
    real, labels = two_class_data()
    with pytest.raises(ValueError, match="also in the budget"):
        condense(real, labels, {3: 1, 7: 1}, "cpu", tiny(), progress=False,
                 context=(torch.randn(2, 3, 8, 8), torch.tensor([3, 1])))
    with pytest.raises(ValueError, match="NaN"):
        condense(real, labels, {3: 1, 7: 1}, "cpu", tiny(), progress=False,
                 context=(torch.full((2, 3, 8, 8), float("nan")), torch.tensor([1, 1])))
    with pytest.raises(ValueError, match="context must be"):
        condense(real, labels, {3: 1, 7: 1}, "cpu", tiny(), progress=False,
                 context=(torch.randn(2, 3, 4, 4), torch.tensor([1, 1])))


def test_condense_starts_from_init():
    real, labels = two_class_data()
    init = (torch.randn(3, 3, 8, 8), torch.tensor([3, 3, 7]))
    images, out_labels = condense(real, labels, {3: 2, 7: 1}, "cpu", tiny(iterations=0),
                                  init=init, progress=False)
    assert torch.equal(images, init[0]) and torch.equal(out_labels, init[1])
    with pytest.raises(ValueError, match="budget"):
        condense(real, labels, {3: 1, 7: 1}, "cpu", tiny(), init=init, progress=False)


def test_init_draws_preferred_images_first_then_fills_up():
    real = torch.arange(6.0).view(6, 1, 1, 1)  # image i is the constant i
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    preferred = torch.tensor([True, False, False, False, True, True])
    images = pad.init_synthetic(real, labels, {0: 2, 1: 2}, "correct", preferred).flatten()
    assert images[0] == 0 and images[1] in (1, 2)  # class 0: its one preferred image, then another
    assert set(images[2:].tolist()) == {4, 5}      # class 1: only preferred images


def test_classified_correctly_is_the_final_expert_network_right():
    torch.manual_seed(0)
    real, labels = two_class_data(n_per_class=20)
    real[labels == 7] += 1.0
    local = (labels == 7).long()
    settings = tiny(expert_train_epochs=3, expert_lr=0.1, scheduler=False)
    trajectory = train_experts(real, local, 2, "cpu", settings, None)[0]
    network = make_network(settings, 2, (3, 8, 8), "cpu")
    torch.nn.utils.vector_to_parameters(trajectory[-1], network.parameters())
    expected = network.eval()(real).argmax(1) == local
    got = pad.classified_correctly(trajectory, real, local, 2, settings)
    assert torch.equal(got, expected) and 0 < int(got.sum()) < len(got)


def test_correct_init_draws_from_the_images_marked_correct(monkeypatch):
    torch.manual_seed(0)
    real, labels = two_class_data(n_per_class=20)
    marked = torch.zeros(len(labels), dtype=torch.bool)
    marked[[1, 5, 8, 13, 21, 30, 34, 39]] = True  # four per class
    monkeypatch.setattr(pad, "classified_correctly", lambda *args, **kwargs: marked)
    images, _ = condense(real, labels, {3: 4, 7: 4}, "cpu", tiny(iterations=0, init="correct"),
                         progress=False)
    chosen = {int(torch.nonzero((real == im).flatten(1).all(1))[0]) for im in images}
    assert chosen == set(torch.nonzero(marked).flatten().tolist())


def test_herding_init_without_a_learner_starts_from_real_images_of_each_class():
    # `ccl condense` has no learner to herd with: "herding" starts from random real images
    torch.manual_seed(0)
    real, labels = two_class_data(n_per_class=20)
    images, out = condense(real, labels, {3: 4, 7: 4}, "cpu", tiny(iterations=0, init="herding"), progress=False)
    for image, label in zip(images, out):
        match = torch.nonzero((real == image).flatten(1).all(1)).flatten()
        assert len(match) and labels[match[0]] == label


def _poison_losses(monkeypatch, bad_calls):
    """Make the matching loss NaN on the given (1-based) calls; returns the call log."""
    real_loss, calls = pad.trajectory_matching_loss, []

    def poisoned(*args):
        calls.append(1)
        loss = real_loss(*args)
        return loss * float("nan") if bad_calls(len(calls)) else loss

    monkeypatch.setattr(pad, "trajectory_matching_loss", poisoned)
    return calls


def test_nan_restarts_from_last_finite_images_with_halved_rates(monkeypatch):
    calls = _poison_losses(monkeypatch, lambda n: n == 3)  # one bad iteration
    torch.manual_seed(0)
    real, labels = two_class_data()
    stats: dict = {}
    with pytest.warns(RuntimeWarning, match=r"restarting from iteration 2 with lr_img 0.5"):
        images, _ = condense(real, labels, {3: 2, 7: 2}, "cpu", tiny(iterations=6, scheduler=False),
                             progress=False, stats=stats)
    assert torch.isfinite(images).all() and len(calls) == 6
    assert stats["recoveries"] == 1 and not stats["stopped"] and stats["iterations"] == 6
    assert math.isfinite(stats["loss"])


def test_nan_that_persists_stops_with_the_last_finite_images(monkeypatch):
    calls = _poison_losses(monkeypatch, lambda n: n >= 3)
    torch.manual_seed(0)
    real, labels = two_class_data()
    stats: dict = {}
    with pytest.warns(RuntimeWarning, match="after 2 restarts"):
        images, _ = condense(real, labels, {3: 2, 7: 2}, "cpu",
                             tiny(iterations=9, scheduler=False, max_recoveries=2),
                             progress=False, stats=stats)
    assert torch.isfinite(images).all()
    assert stats["stopped"] and stats["iterations"] == 2 and stats["recoveries"] == 2
    assert len(calls) == 5  # 2 good, then one bad per try: the first and two restarts


def test_student_lr_is_kept_above_its_floor():
    # An expert that barely moves: the loss pushes the student lr down, hard with this lr_lr.
    settings, _, start, _, images, labels, _ = _student_setup()
    settings = tiny(max_start_epoch=0, expert_epochs=1, expert_train_epochs=1, lr_lr=1e3,
                    iterations=3, scheduler=False, dsa=False)
    trajectories = [[start, start + 1e-4 * torch.randn_like(start)]]
    stats: dict = {}
    pad.distill(trajectories, images.detach(), labels, 2, settings, 0, progress=False, stats=stats)
    assert stats["syn_lr"] == pytest.approx(settings.lr_init / 100)


def test_condense_ignores_non_finite_real_images():
    torch.manual_seed(0)
    real, labels = two_class_data()
    real[0, 0, 0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="ignoring 1 real images"):
        images, _ = condense(real, labels, {3: 2, 7: 2}, "cpu", tiny(), progress=False)
    assert torch.isfinite(images).all()


def test_a_huge_image_step_stays_within_the_real_pixel_range():
    # lr_img 1e6 sent the reference-style images to thousands of pixel units; projection
    # after every step keeps them inside the real images' per-channel range.
    torch.manual_seed(0)
    real, labels = two_class_data(size=16)
    images, _ = condense(real, labels, {7: 3, 3: 2}, "cpu", tiny(lr_img=1e6), progress=False)
    per_channel = real.transpose(0, 1).flatten(1)  # (3, N*H*W)
    low, high = per_channel.amin(1).view(1, 3, 1, 1), per_channel.amax(1).view(1, 3, 1, 1)
    assert torch.isfinite(images).all() and (images >= low).all() and (images <= high).all()
    assert ((images == low) | (images == high)).any()  # the step was large enough to need it


# --- experts that train (issue 47) -----------------------------------------------------------

def test_fitting_depth_starts_no_block_on_a_map_under_4x4():
    assert [fitting_depth(s, 3) for s in (32, 28, 16, 8, 4, 2, 1)] == [3, 3, 3, 2, 1, 1, 1]
    assert fitting_depth(64, 4) == 4 and fitting_depth(32, 1) == 1
    net = make_network(tiny(depth=3), 10, (1, 8, 8), "cpu")
    assert len(net.blocks) == 2 and net.embedding_dim == 8 * 2 * 2
    assert len(make_network(tiny(depth=3), 10, (3, 32, 32), "cpu").blocks) == 3


def test_experts_of_the_shipped_preset_learn_digits():
    """configs/pad.toml's experts on all of digits (1,437 8x8 images, 10 classes): the
    final expert gets most of its training images right and is confident on them. Before
    issue 47 they stayed at chance (0.10) with near-uniform logits: three blocks on 8x8
    images (the third normalising 2x2 maps) and 6 SGD steps an epoch (batch 256)."""
    from ccl.data import load_dataset
    from ccl.memory import split_settings

    data = load_dataset("digits")
    real, labels = data.normalise(data.train_x), torch.from_numpy(data.train_y)
    settings, _ = split_settings("pad", "pad", {"num_experts": 1})  # the preset's method part (holdout is the memory's)
    torch.manual_seed(0)
    order = order_by_difficulty(el2n_scores(real, labels, 10, "cpu", settings), labels)
    (trajectory,) = train_experts(real, labels, 10, "cpu", settings, order)
    network = FunctionalStudent(make_network(settings, 10, (1, 8, 8), "cpu"))
    network.module.eval()
    with torch.no_grad():
        logits = network(trajectory[-1], real)  # (N, 10)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    confidence = logits.softmax(1).max(1).values.mean().item()
    assert accuracy > 0.5, accuracy
    assert confidence > 0.3, confidence  # soft labels from these logits are not uniform (0.1)



def test_image_rate_scales_with_area_from_the_side_it_is_set_for():
    from ccl.memory import split_settings

    shipped, _ = split_settings("pad", "pad", {})
    assert pad.image_lr(shipped, (32, 32)) == shipped.lr_img == 1000.0
    assert pad.image_lr(shipped, (8, 8)) == 62.5  # 1000 * 64 / 1024
    learner, _ = split_settings("pad", "pad-learner", {})
    assert pad.image_lr(learner, (8, 8)) == pad.image_lr(learner, (32, 32)) == learner.lr_img == 1.0
    assert pad.image_lr(tiny(lr_img=4.0), (8, 8)) == 4.0  # 0: as given
    with pytest.raises(ValueError, match="lr_img_side"):
        tiny(lr_img_side=-1)
    with pytest.raises(ValueError, match="expert_min_steps"):
        tiny(expert_min_steps=-1)


def test_expert_batch_gives_an_epoch_at_least_its_minimum_of_steps():
    from ccl.condense.experts import expert_batch

    settings = tiny(expert_batch=256, expert_min_steps=50)
    assert [expert_batch(settings, n) for n in (1437, 2000, 50_000, 10)] == [29, 40, 256, 1]
    assert expert_batch(tiny(expert_batch=256), 1437) == 256  # 0: the reference's batch


def test_the_first_iteration_is_timed_and_the_updates_cost_said_before_the_second(monkeypatch, caplog):
    """A large learner's PAD iteration takes minutes (a ResNet-18 on 2 CPU cores: about 3),
    so the update says what it will take once one iteration is timed, progress bar or not."""
    torch.manual_seed(0)
    real, labels = two_class_data()
    original, calls = pad.match_once, []
    monkeypatch.setattr(pad, "match_once", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    seen_after: list[int] = []  # how many iterations had run when each line was logged

    class Counting(logging.Handler):
        def emit(self, record):
            seen_after.append(len(calls))

    logger = logging.getLogger("ccl.condense")
    counting = Counting()
    logger.addHandler(counting)
    try:
        with caplog.at_level(logging.INFO, logger="ccl.condense"):
            condense(real, labels, {3: 1, 7: 1}, "cpu", tiny(iterations=3), progress=False)
    finally:
        logger.removeHandler(counting)
    lines = [r.getMessage() for r in caplog.records if r.name == "ccl.condense"]
    said = r"PAD classes \[3, 7\]: ~[\d.]+ (s|min)( \d+ min)? an iteration, ~[\d.]+ (s|min|h)( \d+ min)? for this update"
    assert len(lines) == 1 and re.fullmatch(said, lines[0]), lines
    assert seen_after == [1]


def test_the_cost_line_reads_as_an_estimate_and_a_long_update_is_a_warning(caplog):
    assert cost_line("PAD", 190.0, 10) == "PAD: ~3 min an iteration, ~32 min for this update"
    assert cost_line("PAD", 0.25, 3) == "PAD: ~0.25 s an iteration, ~0.75 s for this update"
    assert cost_line("PAD", 700.0, 40) == "PAD: ~12 min an iteration, ~7 h 47 min for this update"
    with caplog.at_level(logging.INFO, logger="ccl.condense"):
        announce_cost("PAD", 190.0, 10)  # 32 min: said even where logging was never configured
        announce_cost("PAD", 0.25, 3)
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]
