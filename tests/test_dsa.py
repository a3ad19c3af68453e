"""Differentiable Siamese Augmentation: siamese pairing, gradients, hand-checked families."""
import math

import pytest
import torch

from ccl.condense.dsa import FAMILIES, DSASettings, Draw, apply, augment, sample_draw, siamese_slots



def only(family: str, **kw) -> DSASettings:
    return DSASettings(families=(family,), **kw)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_kept_and_gradient_reaches_images(family, channels):
    torch.manual_seed(0)
    x = torch.randn(5, channels, 8, 8, requires_grad=True)
    out = augment(x, only(family))
    assert out.shape == x.shape
    out.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_same_draw_same_slot_gives_same_output(family):
    torch.manual_seed(1)
    draw = sample_draw(3, only(family), "cpu")
    image = torch.randn(1, 3, 8, 8)
    # Two "batches" of different sizes (real 4 per class, synthetic 2 per class) whose
    # images of one class share a slot, as DataDAM uses it.
    real = image.repeat(12, 1, 1, 1)
    syn = image.repeat(6, 1, 1, 1)
    real_slot = torch.arange(3).repeat_interleave(4)
    syn_slot = torch.arange(3).repeat_interleave(2)
    out_real, out_syn = apply(real, draw, real_slot), apply(syn, draw, syn_slot)
    for k in range(3):
        expected = out_real[4 * k]
        assert torch.allclose(out_real[4 * k:4 * k + 4], expected.expand(4, -1, -1, -1))
        assert torch.allclose(out_syn[2 * k:2 * k + 2], expected.expand(2, -1, -1, -1))


def test_flip_on_hand_checked_tensor():
    x = torch.arange(6.0).view(1, 1, 2, 3).repeat(2, 1, 1, 1)  # rows [0 1 2], [3 4 5]
    draw = Draw("flip", {"flip": torch.tensor([1.0, 0.0])}, DSASettings())
    out = apply(x, draw)
    assert out[0, 0].tolist() == [[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]  # flipped left-right
    assert torch.equal(out[1], x[1])  # not flipped


def test_crop_translates_with_zero_fill():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    settings = DSASettings(crop=0.25)  # shift up to 1 pixel on 4x4
    # u = 0.9 -> shift floor(0.9 * 3) - 1 = +1 (read one row/column further down/right)
    draw = Draw("crop", {"u_row": torch.tensor([0.9]), "u_col": torch.tensor([0.5])}, settings)
    out = apply(x, draw)[0, 0]
    expected = torch.tensor([[5.0, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [0, 0, 0, 0]])
    assert torch.equal(out, expected)
    # u = 0.0 -> shift -1 along columns: content moves right, zero column on the left.
    draw = Draw("crop", {"u_row": torch.tensor([0.5]), "u_col": torch.tensor([0.0])}, settings)
    out = apply(x, draw)[0, 0]
    assert out[:, 0].tolist() == [0, 0, 0, 0]
    assert torch.equal(out[:, 1:], x[0, 0, :, :3])


def test_cutout_zeros_a_square():
    x = torch.ones(1, 2, 8, 8)
    # size 4; u = 0.5 -> offset floor(0.5 * 9) = 4, rows/cols 2..5 zeroed
    draw = Draw("cutout", {"u_row": torch.tensor([0.5]), "u_col": torch.tensor([0.5])},
                DSASettings(cutout=0.5))
    out = apply(x, draw)
    assert out.sum().item() == 2 * (64 - 16)
    assert torch.all(out[0, :, 2:6, 2:6] == 0)


def test_identity_parameters_leave_images_unchanged():
    x = torch.randn(2, 3, 8, 8)
    s = DSASettings()
    one = torch.ones(2)
    assert torch.allclose(apply(x, Draw("scale", {"sx": one, "sy": one}, s)), x, atol=1e-5)
    assert torch.allclose(apply(x, Draw("rotate", {"angle": torch.zeros(2)}, s)), x, atol=1e-5)
    color = {"brightness": torch.zeros(2), "saturation": one, "contrast": one}
    assert torch.allclose(apply(x, Draw("color", color, s)), x, atol=1e-5)


def test_rotate_quarter_turn_matches_rot90():
    x = torch.randn(1, 1, 6, 6)
    out = apply(x, Draw("rotate", {"angle": torch.tensor([math.pi / 2])}, DSASettings()))
    # The sign convention depends on affine_grid; the reference's 90 degrees is one of these.
    assert any(torch.allclose(out, torch.rot90(x, k, (2, 3)), atol=1e-5) for k in (1, 3))


def test_sample_draw_parameters_in_range():
    torch.manual_seed(0)
    s = DSASettings()
    for _ in range(30):
        d = sample_draw(50, s, "cpu")
        assert d.slots == 50 and d.family in FAMILIES
        if d.family == "scale":
            assert d.params["sx"].min() >= 1 / 1.2 - 1e-6 and d.params["sx"].max() <= 1.2
        if d.family == "rotate":
            assert d.params["angle"].abs().max() <= math.radians(15)


def test_siamese_slots_maps_labels_to_class_positions():
    labels = torch.tensor([7, 3, 3, 7, 5])
    assert siamese_slots(labels, [7, 3]).tolist() == [0, 1, 1, 0, -1]


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="unknown DSA families"):
        DSASettings(families=("colour",))
    with pytest.raises(ValueError, match="empty"):
        DSASettings(families=())


def test_crop_flip_shifts_and_mirrors_each_image_as_torchvision_would():
    from ccl.data.augment import crop_flip
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    out = crop_flip(x, padding=2, fill=fill)
    padded = torch.nn.functional.pad(x - fill.view(1, 3, 1, 1), (2,) * 4) + fill.view(1, 3, 1, 1)
    shifts, flips = set(), 0
    for i in range(len(x)):
        found = [(t, l, f) for t in range(5) for l in range(5) for f in (False, True)
                 if torch.equal(out[i], (lambda c: c.flip(2) if f else c)(padded[i, :, t:t + 8, l:l + 8]))]
        assert found, "every output is a crop of the padded image, flipped or not"
        shifts.add(found[0][:2])
        flips += found[0][2]
    assert len(shifts) > 10 and 16 < flips < 48  # offsets and flips vary from image to image
