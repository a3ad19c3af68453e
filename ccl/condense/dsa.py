"""Differentiable Siamese Augmentation (DSA; Zhao and Bilen, ICML 2021).

Mode "S" of the reference: every call draws ONE augmentation family at random (color,
crop, cutout, flip, scale or rotate) and random parameters for it. Everything is
differentiable with respect to the images (arithmetic, masks, gather, affine_grid /
grid_sample), vectorised over the batch and created on the images' device.

A draw holds parameters for a number of *slots*; `apply` gives sample i the parameters
of slot `slot[i]`. "Siamese" use: give the real and the synthetic images of one class
the same slot of the same draw, so both see the identical transformation. That is what
the reference does: with a shared seed it overwrites every sample's parameters with the
first sample's (`theta[:] = theta[0]`), so one class's real batch and synthetic batch all
get ONE transformation. `siamese_slots` computes such slots (one per class) from labels.

Departures from the reference (VICO-UoE/DatasetCondensation, DataDAM utils.py):
- No reseeding of torch's global generator (the reference reseeds from the clock and
  then increments the seed before every random tensor); parameters come from torch's
  global generator, seeded once by the entry point, and the siamese pairing comes from
  sharing a `Draw` instead of sharing a seed.
- Crop and cutout parameters are stored as uniforms in [0, 1) and turned into integer
  pixel offsets at `apply` time, so a draw does not depend on the image size. The
  resulting offsets have the same distribution as the reference's `randint`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSASettings:
    """Strengths of the augmentations; defaults are the reference's `ParamDiffAug`."""

    brightness: float = 1.0   # add U(-0.5, 0.5) * brightness to every pixel
    saturation: float = 2.0   # scale the deviation from the channel mean by U(0, 1) * saturation
    contrast: float = 0.5     # scale the deviation from the image mean by U(0, 1) + contrast
    crop: float = 0.125       # translate by up to crop * size pixels (zero fill)
    cutout: float = 0.5       # zero a square of cutout * size pixels
    flip: float = 0.5         # probability of a horizontal flip
    scale: float = 1.2        # zoom factor in [1 / scale, scale], per axis
    rotate: float = 15.0      # rotation angle in [-rotate, rotate] degrees
    # Mode "S": one family drawn uniformly per call. The reference's default strategy
    # string is "color_crop_cutout_flip_scale_rotate", i.e. all six.
    families: tuple[str, ...] = FAMILIES

    def __post_init__(self) -> None:
        if not self.families:
            raise ValueError("DSASettings.families is empty; name at least one of "
                             f"{', '.join(FAMILIES)} (or switch DSA off in the method)")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown DSA families {unknown}; choose from {', '.join(FAMILIES)}")
        if not 0.0 <= self.flip <= 1.0:
            raise ValueError(f"DSASettings.flip is a probability, got {self.flip}")
        if self.scale < 1.0:
            raise ValueError("DSASettings.scale must be >= 1 (zoom range [1/s, s]), "
                             f"got {self.scale}")
        if not 0.0 <= self.crop < 1.0 or not 0.0 <= self.cutout <= 1.0:
            raise ValueError("DSASettings.crop must be in [0, 1) and cutout in [0, 1], "
                             f"got crop={self.crop}, cutout={self.cutout}")


@dataclass(frozen=True)
class Draw:
    """One random augmentation: a family and per-slot parameters (each a (slots,) tensor)."""

    family: str
    params: dict[str, torch.Tensor]
    settings: DSASettings

    @property
    def slots(self) -> int:
        return next(iter(self.params.values())).shape[0]


def sample_draw(slots: int, settings: DSASettings, device: torch.device | str) -> Draw:
    """Draw one augmentation family and random parameters for `slots` slots.

    Args:
        slots: number of independent parameter sets (e.g. one per class for siamese use,
            one per sample for plain augmentation).
        settings: augmentation strengths and the families to choose from.
        device: where the parameter tensors live (that of the images to augment).

    The family is chosen with torch's global CPU generator (no device synchronisation),
    the parameters with the device's global generator.
    """
    if slots < 1:
        raise ValueError(f"a DSA draw needs at least one slot, got {slots}")
    family = settings.families[int(torch.randint(len(settings.families), (1,)))]

    def uniform() -> torch.Tensor:
        return torch.rand(slots, device=device)  # (slots,) in [0, 1)

    s = settings
    if family == "color":
        # Reference: the "color" family applies brightness, saturation and contrast in
        # turn, each with its own random factor.
        params = {"brightness": (uniform() - 0.5) * s.brightness,
                  "saturation": uniform() * s.saturation,
                  "contrast": uniform() + s.contrast}
    elif family == "crop":
        params = {"u_row": uniform(), "u_col": uniform()}
    elif family == "cutout":
        params = {"u_row": uniform(), "u_col": uniform()}
    elif family == "flip":
        params = {"flip": (uniform() < s.flip).float()}
    elif family == "scale":
        lo = 1.0 / s.scale
        params = {"sx": uniform() * (s.scale - lo) + lo, "sy": uniform() * (s.scale - lo) + lo}
    else:  # rotate
        params = {"angle": (uniform() - 0.5) * 2.0 * math.radians(s.rotate)}
    return Draw(family, params, settings)


def apply(x: torch.Tensor, draw: Draw, slot: torch.Tensor | None = None) -> torch.Tensor:
    """Augment `x` with `draw`; sample i uses the parameters of slot `slot[i]`.

    Args:
        x: (N, C, H, W) images; the result is differentiable with respect to them.
        draw: from `sample_draw`.
        slot: (N,) long slot index of each sample, on x's device; None means
            `arange(N)` (needs draw.slots >= N).

    Returns:
        (N, C, H, W) augmented images.
    """
    if x.dim() != 4:
        raise ValueError(f"DSA expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    if slot is None:
        if x.shape[0] > draw.slots:
            raise ValueError(f"draw has {draw.slots} slots but {x.shape[0]} samples "
                             "and no slot index")
        slot = torch.arange(x.shape[0], device=x.device)
    p = {k: v[slot] for k, v in draw.params.items()}  # each (N,)
    return _FAMILY_FNS[draw.family](x, p, draw.settings)


def augmenter(settings: DSASettings | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """`augment` with these settings as a function of the images alone (None: no augmentation)."""
    return None if settings is None else functools.partial(augment, settings=settings)


def augment(x: torch.Tensor, settings: DSASettings) -> torch.Tensor:
    """Plain (non-siamese) DSA: a fresh draw with independent parameters per sample.

    Args:
        x: (N, C, H, W) images.
        settings: augmentation strengths and families.
    """
    return apply(x, sample_draw(x.shape[0], settings, x.device))


def siamese_slots(labels: torch.Tensor, classes: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Slot of every sample for siamese use: the position of its class in `classes`.

    Passing the result as `slot` for both the real and the synthetic images (with the
    same draw of len(classes) slots) gives all images of one class one transformation,
    as the reference does. Labels not in `classes` get slot -1 (an invalid index).

    Args:
        labels: (N,) long class labels.
        classes: the classes, in slot order.
    """
    table = torch.full((max(classes) + 1,), -1, dtype=torch.long)
    table[torch.as_tensor(list(classes), dtype=torch.long)] = torch.arange(len(classes))
    table = table.to(labels.device)
    # Labels above max(classes) are mapped to -1 too, without a host round trip.
    inside = labels <= table.shape[0] - 1
    return torch.where(inside, table[labels.clamp(max=table.shape[0] - 1)], -1)  # (N,)


# --- the families -------------------------------------------------------------------
# Each takes images (N, C, H, W), a dict of per-sample parameters (N,) and the settings.

def _view4(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)  # (N, 1, 1, 1), broadcasts over C, H, W


def _color(x: torch.Tensor, p: dict[str, torch.Tensor], s: DSASettings) -> torch.Tensor:
    x = x + _view4(p["brightness"])
    mean = x.mean(dim=1, keepdim=True)  # (N, 1, H, W): per-pixel mean over channels
    x = (x - mean) * _view4(p["saturation"]) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    return (x - mean) * _view4(p["contrast"]) + mean


def _crop(x: torch.Tensor, p: dict[str, torch.Tensor], s: DSASettings) -> torch.Tensor:
    # Translation with zero fill, as the reference: pad by one zero pixel, shift the
    # sampling grid by an integer in [-shift, shift] and clamp it into the padded image,
    # so every pixel that comes from outside the image reads a zero.
    n, c, h, w = x.shape
    shift_r, shift_c = int(h * s.crop + 0.5), int(w * s.crop + 0.5)
    tr = (p["u_row"] * (2 * shift_r + 1)).long() - shift_r  # (N,) in [-shift_r, shift_r]
    tc = (p["u_col"] * (2 * shift_c + 1)).long() - shift_c  # (N,)
    rows = (torch.arange(h, device=x.device) + 1 + tr[:, None]).clamp(0, h + 1)  # (N, H)
    cols = (torch.arange(w, device=x.device) + 1 + tc[:, None]).clamp(0, w + 1)  # (N, W)
    index = rows[:, :, None] * (w + 2) + cols[:, None, :]  # (N, H, W) into the padded image
    padded = F.pad(x, (1, 1, 1, 1)).flatten(2)  # (N, C, (H+2)*(W+2))
    out = padded.gather(2, index.view(n, 1, h * w).expand(n, c, h * w))  # (N, C, H*W)
    return out.view(n, c, h, w)


def _cutout(x: torch.Tensor, p: dict[str, torch.Tensor], s: DSASettings) -> torch.Tensor:
    # Zero a square of `cutout * size` pixels whose centre is uniform over the image
    # (the reference's offset range, including its extra position for even sizes).
    n, c, h, w = x.shape
    size_r, size_c = int(h * s.cutout + 0.5), int(w * s.cutout + 0.5)
    top = (p["u_row"] * (h + 1 - size_r % 2)).long() - size_r // 2  # (N,)
    left = (p["u_col"] * (w + 1 - size_c % 2)).long() - size_c // 2  # (N,)
    r = torch.arange(h, device=x.device)
    cc = torch.arange(w, device=x.device)
    in_r = (r >= top[:, None]) & (r < top[:, None] + size_r)  # (N, H)
    in_c = (cc >= left[:, None]) & (cc < left[:, None] + size_c)  # (N, W)
    keep = ~(in_r[:, :, None] & in_c[:, None, :])  # (N, H, W)
    return x * keep.unsqueeze(1).to(x.dtype)


def _flip(x: torch.Tensor, p: dict[str, torch.Tensor], s: DSASettings) -> torch.Tensor:
    return torch.where(_view4(p["flip"]) > 0.5, x.flip(3), x)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    # align_corners=False is what the reference gets from torch's default.
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(x, grid, align_corners=False)


def _scale(x: torch.Tensor, p: dict[str, torch.Tensor], s: DSASettings) -> torch.Tensor:
    zero = torch.zeros_like(p["sx"])
    theta = torch.stack([torch.stack([p["sx"], zero, zero], 1),
                         torch.stack([zero, p["sy"], zero], 1)], 1)  # (N, 2, 3)
    return _affine(x, theta)


def _rotate(x: torch.Tensor, p: dict[str, torch.Tensor], s: DSASettings) -> torch.Tensor:
    cos, sin = torch.cos(p["angle"]), torch.sin(p["angle"])
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1),
                         torch.stack([sin, cos, zero], 1)], 1)  # (N, 2, 3)
    return _affine(x, theta)


_FAMILY_FNS = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip,
               "scale": _scale, "rotate": _rotate}
