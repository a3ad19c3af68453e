"""DataDAM: dataset distillation with attention matching (Sajedi et al., ICCV 2023), and DM.

Every iteration draws a fresh randomly initialised ConvNet and moves the synthetic images
so that, class by class, the network's spatial attention maps at every intermediate block
(SAM) and its final embeddings (MMD) have the same mean on synthetic as on real images:

    L = sam_weight * sum_k sum_{l < L} || mean_{x in T_k} a_l(x) - mean_{s in S_k} a_l(s) ||^2
        + mmd_weight * sum_k || mean_{x in T_k} phi(x) - mean_{s in S_k} phi(s) ||^2

with a_l(x) = vec(sum_c |f_l(x)_c|^p) / ||.||_2 (paper eq. 1-3) and phi the flattened
features before the classifier (paper eq. 4, a linear-kernel MMD). With sam_weight 0 this
is DM (distribution matching, Zhao and Bilen, WACV 2023): see `dm_settings`.

The random networks are ccl's ConvNet by default (the paper's, where l runs over its
blocks), or with `network = "learner"` the replay learner's own architecture (a
torchvision ResNet, any CNN): there l runs over its stages, the maps just before each
change of resolution, found by forward hooks (`ccl.models.stages`, which states the rule),
and phi is its embedding (`embed(x)`, else the input of its last nn.Linear).

Implementation notes (why it is fast): all classes' real images go through the network
together (without autograd; on CPU in fixed pieces of 32 images, which stay in cache) and
all synthetic images in one forward pass; class means are `index_add` reductions, never a
loop over classes; the network is one module whose layers are re-initialised in place;
real indices are drawn on the device; the host synchronises only every `progress_every`
iterations.
"""
from __future__ import annotations

import copy
import functools
import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ccl.condense import LoopCheckpoint, announce_cost, progress_problem
from ccl.condense.bounds import channel_range, project_
from ccl.condense.dsa import DSASettings, apply, sample_draw, siamese_slots
from ccl.models.convnet import NORMS, ConvNet
from ccl.models.stages import Tapped, find_stages
from ccl.training import now, reinitialise


NETWORKS = ("convnet", "learner")  # DataDAMSettings.network


@dataclass(frozen=True)
class DataDAMSettings:
    """DataDAM hyperparameters; defaults follow the paper, comments give the reference code."""
    # Not a setting (no annotation): the name its saved progress carries (ccl.condense.progress_problem).
    loop = "datadam"

    iterations: int = 8000      # paper 8,000; reference default 20,000
    # Passes over each class's real images (real_batch of them an iteration), so that the
    # cost follows the data: iterations = min(iterations, ceil(real_epochs * n / real_batch))
    # for classes of n real images on average. 0 = always `iterations`. An iteration costs
    # a forward and backward pass of every synthetic image, so the update then costs in
    # proportion to the real data it condenses, as training does.
    real_epochs: float = 0.0
    real_batch: int = 64        # real images per class per iteration (reference 64; DM 256)
    # Real images per no-grad forward pass (the real batch is K * real_batch images).
    # None = automatic: 32 on CPU, where the activations of 32 images stay in cache and the
    # real pass ran about 2x faster than in one piece (benchmarks/bench_datadam.py); one
    # piece on GPUs. Always one piece with BatchNorm, whose batch statistics cover all
    # classes' real images as in the reference. 0 = one piece.
    real_chunk: int | None = None
    # Exponent of the attention map sum_c |f_c|^p. Paper 4; the reference calls
    # get_attention(param=1, exp=1), i.e. p = 1.
    p: float = 4.0
    # Weights of the two terms. Paper: L = SAM + lambda * MMD with lambda 0.01 (0.02 at
    # higher resolution). Reference: 100 * SAM + 100 * 0.01 * MMD, effective weights 100
    # and 1; with SGD the overall scale acts as a learning-rate factor, so the paper
    # weights take steps 100x smaller than the reference's (see `reference_settings`).
    sam_weight: float = 1.0     # 0 gives DM
    mmd_weight: float = 0.01    # the paper's lambda
    lr_images: float = 1.0      # SGD learning rate of the images; reference 10 for IPC >= 100
    # 0: lr_images as given. N: lr_images is the rate for N x N images, and other sizes
    # scale it by their area (H * W / N^2). The same rate moves small images much further:
    # under configs/datadam.toml at rate 1, 8x8 digits moved 28-34 pixel levels of 255 in
    # their last experiences, 32x32 CIFAR images about 2 (25 a class). The area factor is
    # a calibration on those two data sets (docs/results.md), not a law: how a pixel's
    # gradient scales with the image size depends on the network's depth and pooling.
    lr_images_side: int = 0
    momentum: float = 0.5
    # The random networks' architecture. "convnet": ccl's ConvNet of `width`, `depth` and
    # `norm` (the paper's). "learner": the replay learner's own architecture, its stages
    # found by `ccl.models.stages.find_stages` (the caller hands the learner over as
    # `network`; `CondensedReplay` does), so the images carry what a network like the one
    # that replays them attends to; width, depth, norm and compile then go unused.
    network: str = "convnet"
    # Norm of the random networks: the paper's ConvNet uses instance norm; the reference
    # forces BatchNorm (train mode, batch statistics over all classes' images at once).
    norm: str = "instance"
    width: int = 128
    depth: int = 3
    dsa: bool = True            # siamese DSA on real and synthetic images of each class
    dsa_settings: DSASettings = field(default_factory=DSASettings)
    # "real": random real images of the class; "noise": N(0, 1); "herding": the replay
    # memory starts from the learner's herding exemplars (standalone: as "real").
    init: str = "real"
    # Match every prefix of a class's images that the caller names (`prefix_sizes`) as a
    # set of its own, so that keeping the first k images after a shrink keeps a matched set
    # (a subset of a jointly optimised set is not one). The replay memory passes the sizes
    # its schedule will cut each class to; standalone condensation has none.
    nested: bool = False
    # Weight of a third term: the MMD of a guide network's L2-normalised embeddings (the
    # replay learner, as SSD matches on the model being trained), so the images also carry
    # what this learner uses, not only what random networks see. 0 = off, the paper's loss.
    guide_weight: float = 0.0
    # `ccl run` only: each condensed image's soft target is the guide network's (the
    # learner's) logits on it, which replay trains toward (ccl.memory.fillers).
    soft_labels: bool = False
    progress_every: int = 50    # iterations between host synchronisations (bar, NaN check)
    # torch.compile the per-block work (conv -> norm -> ReLU -> attention -> class sums),
    # fusing the memory-bound steps. On 2 CPU cores it halved the time per iteration after
    # about a minute of compilation (once per process and input shape): worth it for runs
    # of hundreds of iterations or more. Needs a working C++ compiler (CPU) or Triton (GPU).
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("iterations", "real_batch", "width", "depth", "progress_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DataDAMSettings.{name} must be an integer >= 1, got {value!r}")
        chunk = self.real_chunk
        if chunk is not None and (not isinstance(chunk, int) or chunk < 0):
            raise ValueError("DataDAMSettings.real_chunk must be None or an integer >= 0, "
                             f"got {chunk!r}")
        if self.norm == "batch" and chunk:
            raise ValueError("DataDAMSettings.real_chunk must be None or 0 with norm='batch': "
                             "chunks would change BatchNorm's batch statistics")
        if self.p <= 0:
            raise ValueError(f"DataDAMSettings.p (attention exponent) must be > 0, got {self.p}")
        if self.sam_weight < 0 or self.mmd_weight < 0:
            raise ValueError("DataDAMSettings.sam_weight and mmd_weight must be >= 0, got "
                             f"{self.sam_weight} and {self.mmd_weight}")
        if self.sam_weight == 0 and self.mmd_weight == 0:
            raise ValueError("DataDAMSettings: sam_weight and mmd_weight are both 0, "
                             "nothing to match")
        if not (self.real_epochs >= 0 and math.isfinite(self.real_epochs)):
            raise ValueError(f"DataDAMSettings.real_epochs must be >= 0, got {self.real_epochs}")
        if self.lr_images <= 0:
            raise ValueError(f"DataDAMSettings.lr_images must be > 0, got {self.lr_images}")
        if not isinstance(self.lr_images_side, int) or self.lr_images_side < 0:
            raise ValueError("DataDAMSettings.lr_images_side must be an integer >= 0, "
                             f"got {self.lr_images_side!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"DataDAMSettings.momentum must be in [0, 1), got {self.momentum}")
        if self.norm not in NORMS:
            raise ValueError(f"DataDAMSettings.norm must be one of {', '.join(NORMS)}, "
                             f"got {self.norm!r}")
        if self.network not in NETWORKS:
            raise ValueError(f"DataDAMSettings.network must be one of {', '.join(NETWORKS)}, "
                             f"got {self.network!r}")
        if self.init not in ("real", "noise", "herding"):
            raise ValueError(f"DataDAMSettings.init must be 'real', 'noise' or 'herding', got {self.init!r}")
        if self.guide_weight < 0:
            raise ValueError(f"DataDAMSettings.guide_weight must be >= 0, got {self.guide_weight}")

    def work(self, classes: int, synthetic: int, real_per_class: float, learner_width: int) -> float:
        """A rough cost of condensing `classes` classes of `real_per_class` real images into
        `synthetic` images, in sample-passes of the learner (one image forward and backward
        through it; a forward alone is about a third): every iteration passes real_batch
        real images a class forward and every synthetic image forward and backward through
        the random network, a ConvNet's cost growing about as its width squared (with
        network "learner", the learner's own cost), and with `guide_weight` through the
        learner too. For a run's time estimate."""
        per_iteration = classes * self.real_batch / 3 + synthetic
        random = 1.0 if self.network == "learner" else (self.width / learner_width) ** 2
        networks = random + (1 if self.guide_weight > 0 else 0)
        return iteration_budget(self, real_per_class) * per_iteration * networks


def dm_settings(**overrides) -> DataDAMSettings:
    """DM (distribution matching) = DataDAM without the SAM term.

    The MMD weight defaults to 1: DM's own loss, and the effective MMD weight of the DataDAM
    reference code (100 * 0.01). DM's reference also uses real_batch 256 and 20,000
    iterations; those are left to the caller.

    Args:
        overrides: any other DataDAMSettings field.
    """
    if overrides.get("sam_weight", 0.0) != 0.0:
        raise ValueError("DM has no SAM term; use DataDAMSettings for sam_weight > 0")
    return DataDAMSettings(**{"mmd_weight": 1.0, **overrides, "sam_weight": 0.0})


def reference_settings(**overrides) -> DataDAMSettings:
    """The settings the DataDAM reference code actually runs with (CIFAR, IPC < 100).

    p = 1, effective weights 100 (SAM) and 1 (MMD), BatchNorm networks, 20,000 iterations.

    Args:
        overrides: any other DataDAMSettings field.
    """
    base = {"p": 1.0, "sam_weight": 100.0, "mmd_weight": 1.0, "norm": "batch", "iterations": 20000}
    return DataDAMSettings(**{**base, **overrides})


# --- pure loss functions --------------------------------------------------------------

def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    """Spatial attention of feature maps: a(f) = vec(sum_c |f_c|^p) / ||vec(sum_c |f_c|^p)||_2.

    Args:
        f: (N, C, H, W) feature maps.
        p: exponent.

    Returns:
        (N, H*W) attention maps, each of unit L2 norm (zero maps stay zero).
    """
    a = _abs_pow(f, p).sum(dim=1).flatten(1)  # (N, H*W)
    return nn.functional.normalize(a, p=2.0, dim=1)


def _abs_pow(f: torch.Tensor, p: float) -> torch.Tensor:
    """|f|^p; the common exponents by multiplication, which is about twice as fast as pow."""
    if p == 1:
        return f.abs()
    if p == 2:
        return f.square()
    if p == 4:
        return f.square().square()
    return f.abs().pow(p)


def class_means(x: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mean of the rows of `x` in each group, by one index_add (no loop over groups).

    Args:
        x: (N, ...) values; flattened to (N, D).
        group: (N,) long group (class position) of every row, in [0, num_groups).
        num_groups: number of groups; every group must have at least one row.

    Returns:
        (num_groups, D) means.
    """
    return class_sums(x, group, num_groups) / _group_sizes(group, num_groups, x.dtype)[:, None]


def _group_sizes(group: torch.Tensor, num_groups: int, dtype: torch.dtype) -> torch.Tensor:
    if group.dim() == 2:  # (G, N) membership matrix: rows may overlap (nested prefixes)
        return group.sum(1).to(dtype)
    # index_add rather than bincount: CUDA's bincount reads the maximum back to the host.
    ones = torch.ones(group.shape[0], dtype=dtype, device=group.device)
    sizes = torch.zeros(num_groups, dtype=dtype, device=group.device)
    return sizes.index_add(0, group, ones)  # (G,)


def class_sums(x: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(num_groups, D) sums of the rows of `x` (flattened to (N, D)) in each group.

    `group` is either (N,) long group indices or a (G, N) 0/1 membership matrix, where a
    row may belong to several groups (the nested prefixes of a class)."""
    x = x.flatten(1)  # (N, D)
    if group.dim() == 2:
        return group.to(x.dtype) @ x  # (G, D)
    sums = torch.zeros(num_groups, x.shape[1], dtype=x.dtype, device=x.device)
    return sums.index_add(0, group, x)  # (G, D)


def sam_loss(real_blocks: list[torch.Tensor], syn_blocks: list[torch.Tensor],
             real_group: torch.Tensor, syn_group: torch.Tensor, num_groups: int,
             p: float) -> torch.Tensor:
    """Spatial attention matching (paper eq. 3), summed over classes and blocks.

    L_SAM = sum_k sum_{l=1}^{L-1} || mean_{T_k} a_l - mean_{S_k} a_l ||_2^2; the last block
    is left to the MMD term, as in the reference.

    Args:
        real_blocks: per block, (N_real, C, H, W) activations of the real images.
        syn_blocks: per block, (N_syn, C, H, W) activations of the synthetic images.
        real_group, syn_group: (N_real,), (N_syn,) class position of every image.
        num_groups: number of classes.
        p: attention exponent.
    """
    loss = syn_blocks[0].new_zeros(())
    for f_real, f_syn in zip(real_blocks[:-1], syn_blocks[:-1]):
        mean_real = class_means(attention_map(f_real, p), real_group, num_groups)  # (K, H*W)
        mean_syn = class_means(attention_map(f_syn, p), syn_group, num_groups)  # (K, H*W)
        loss = loss + (mean_real - mean_syn).pow(2).sum()
    return loss


def mmd_loss(real_embed: torch.Tensor, syn_embed: torch.Tensor,
             real_group: torch.Tensor, syn_group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Linear-kernel MMD of the final embeddings (paper eq. 4; DM's loss), summed over classes.

    L_MMD = sum_k || mean_{T_k} phi - mean_{S_k} phi ||_2^2.

    Args:
        real_embed: (N_real, D) embeddings of the real images.
        syn_embed: (N_syn, D) embeddings of the synthetic images.
        real_group, syn_group: class position of every image.
        num_groups: number of classes.
    """
    mean_real = class_means(real_embed, real_group, num_groups)  # (K, D)
    mean_syn = class_means(syn_embed, syn_group, num_groups)  # (K, D)
    return (mean_real - mean_syn).pow(2).sum()


# --- network helpers ------------------------------------------------------------------

def block_activations(net: ConvNet, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every block's activation after ReLU and before pooling, and the final embedding.

    The reference hooks the ReLU outputs, i.e. the attention maps are taken before each
    block's pooling (at 32x32 and 16x16 for CIFAR) rather than on `ConvNet.block_outputs`.

    Args:
        net: a ConvNet whose blocks are Sequential(conv, norm, relu, pool).
        x: (N, C, H, W) images.

    Returns:
        per block (N, width, H_l, W_l) activations, and the (N, embedding_dim) embedding.
    """
    activations = []
    for block in net.blocks:
        x = block[:-1](x)  # conv -> norm -> ReLU
        activations.append(x)
        x = block[-1](x)  # pool (or identity for tiny inputs)
    return activations, x.flatten(1)


def matching_statistics(net: ConvNet | Tapped, x: torch.Tensor, group: torch.Tensor, num_groups: int,
                        p: float, attention: bool = True, chunk: int = 0,
                        compiled: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    """What DataDAM matches, per class: the mean attention map of every block but the last
    and the mean embedding. Same values as `block_activations` + `attention_map` +
    `class_means`, but each block's activation is reduced to class sums as soon as it
    exists, so under no_grad (the real images) no activation outlives its block.

    Args:
        net: a ConvNet whose blocks are Sequential(conv, norm, relu, pool), or any network
            with its intermediate stages tapped (`stage_network`).
        x: (N, C, H, W) images.
        group: (N,) class position of every image, or a (G, N) membership matrix.
        num_groups: number of classes K (groups G); every group needs at least one image.
        p: attention exponent.
        attention: compute the attention maps (False for DM).
        chunk: images per forward pass; 0 = all at once. Chunks change nothing for
            instance norm, but would change BatchNorm's batch statistics.
        compiled: run the blocks through torch.compile (see DataDAMSettings.compile);
            ConvNet only.

    Returns:
        per intermediate block the (K, H_l*W_l) class-mean attention, and the (K, D)
        class-mean embedding.
    """
    n = x.shape[0]
    step = chunk if 0 < chunk < n else n
    if isinstance(net, Tapped):
        block_sums = _stage_sums
    else:
        block_sums = _compiled_block_sums() if compiled else _block_sums
    maps: list[torch.Tensor] = []
    embed = None
    for start in range(0, n, step):  # fixed-size pieces, unrelated to classes
        part = group[..., start:start + step]  # (piece,) indices or (G, piece) membership
        part_maps, part_embed = block_sums(net, x[start:start + step], part, num_groups, p, attention)
        maps = part_maps if not maps else [a + b for a, b in zip(maps, part_maps)]
        embed = part_embed if embed is None else embed + part_embed
    counts = _group_sizes(group, num_groups, embed.dtype)[:, None]  # (K, 1)
    return [m / counts for m in maps], embed / counts


def _block_sums(net: ConvNet, x: torch.Tensor, group: torch.Tensor, num_groups: int, p: float,
                attention: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Class sums of the attention maps of the intermediate blocks and of the embedding."""
    maps = []
    last = len(net.blocks) - 1
    for i, block in enumerate(net.blocks):
        x = block[:-1](x)  # (N, width, H_l, W_l): conv -> norm -> ReLU
        if attention and i < last:
            maps.append(class_sums(attention_map(x, p), group, num_groups))  # (K, H_l*W_l)
        x = block[-1](x)  # pool
    return maps, class_sums(x.flatten(1), group, num_groups)  # (K, D)


def _stage_sums(net: Tapped, x: torch.Tensor, group: torch.Tensor, num_groups: int, p: float,
                attention: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """As `_block_sums`, for a tapped network: each intermediate stage's output is reduced
    to class sums of its attention map as soon as its hook sees it."""
    maps: list[torch.Tensor] = []

    def reduce(f: torch.Tensor) -> None:  # f: (N, C_l, H_l, W_l)
        maps.append(class_sums(attention_map(f, p), group, num_groups))  # (K, H_l*W_l)

    embed = net(x, reduce if attention else None)  # (N, D)
    return maps, class_sums(embed, group, num_groups)  # (K, D)


@functools.cache
def _compiled_block_sums():
    # Built once per process; torch.compile specialises it per input shape and grad mode.
    return torch.compile(_block_sums, dynamic=False)


def matching_network(num_classes: int, shape: tuple[int, int, int], settings: DataDAMSettings,
                     device: torch.device) -> ConvNet:
    """The random network DataDAM re-initialises every iteration (weights frozen, train mode).

    Args:
        num_classes: classifier outputs (unused by the loss, kept for a standard ConvNet).
        shape: (C, H, W) of the images.
        settings: width, depth and norm.
        device: where it lives.
    """
    c, h, w = shape
    net = ConvNet(num_classes=num_classes, channels=c, image_size=min(h, w), width=settings.width,
                  depth=settings.depth, norm=settings.norm).to(device)
    _check_block_layout(net)
    net.requires_grad_(False)  # the images learn, never the network
    net.train()  # BatchNorm: batch statistics, as the reference
    return net.to(memory_format=_memory_format(device))


def stage_network(model: nn.Module, shape: tuple[int, int, int], device: torch.device) -> Tapped:
    """The random networks of DataDAMSettings.network = "learner": a copy of `model`
    (weights frozen, train mode, as `matching_network`) with a hook on every stage the SAM
    term matches: every stage `find_stages` finds but the last, whose information reaches
    the loss through the embedding (as the last block of the ConvNet path). Every
    iteration re-initialises it in place, each layer by its own `reset_parameters()`
    (PyTorch's default initialisation, not a constructor's own scheme such as
    torchvision's ResNet's).

    Args:
        model: the learner (copied; never changed).
        shape: (C, H, W) of the images.
        device: where it lives.
    """
    copy_ = copy.deepcopy(model).to(device)
    probe = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0)).to(device)  # not the global draws
    plan = find_stages(copy_, probe)
    kept = [name for name, module in copy_.named_modules()
            if not hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False))]
    if kept:
        warnings.warn(f"DataDAM: {type(model).__name__}'s module(s) {', '.join(kept)} have parameters but no "
                      "reset_parameters(): every random network keeps the learner's weights there",
                      RuntimeWarning, stacklevel=3)
    if len(plan.stages) < 2:
        warnings.warn(f"DataDAM: {type(model).__name__} has {len(plan.stages)} stage(s) (feature-map resolutions "
                      "before its embedding), none intermediate: the attention term has nothing to match and the "
                      "loss is the embedding term alone (as DM)", RuntimeWarning, stacklevel=3)
    net = Tapped(copy_, plan.stages[:-1], plan.embedding)
    net.requires_grad_(False)  # the images learn, never the network
    net.train()  # BatchNorm: batch statistics, as the reference
    return net.to(memory_format=_memory_format(device))


def real_chunk(settings: DataDAMSettings, device: torch.device, network: nn.Module | None = None) -> int:
    """Images per forward pass over the real batch (0 = all at once); see the setting.
    With a learner `network`, in one piece where it has BatchNorm (as norm "batch")."""
    if settings.real_chunk is not None:
        return settings.real_chunk
    batch_norm = _has_batch_norm(network) if network is not None else settings.norm == "batch"
    return 32 if device.type == "cpu" and not batch_norm else 0


def _has_batch_norm(network: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules())


def _memory_format(device: torch.device) -> torch.memory_format:
    # On CPU the oneDNN convolutions, pooling and the channel sums of the attention maps
    # are about 20% faster per iteration in channels-last layout (measured on 2 CPU cores);
    # on CUDA the default layout is kept (not measured there).
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def _check_block_layout(net: ConvNet) -> None:
    for block in net.blocks:
        if not (isinstance(block, nn.Sequential) and isinstance(block[-2], nn.ReLU)):
            raise TypeError("DataDAM expects ConvNet blocks Sequential(conv, norm, ReLU, pool); "
                            "ccl.models.convnet changed, update block_activations")


# --- sampling -------------------------------------------------------------------------

def _positions(counts: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """n random positions in [0, counts[k]) for every class k, drawn on counts' device.

    A random n-subset where a class has at least n images (as the reference's
    permutation[:n]); where it has fewer, all its images in random order, repeated
    cyclically (so the class mean is estimated from every image, evenly).

    Args:
        counts: (K,) long number of images of each class (all >= 1).
        n: positions per class.
        width: max(counts.max(), n), known on the host (avoids a device sync).

    Returns:
        (K, n) long positions.
    """
    keys = torch.rand(counts.shape[0], width, device=counts.device)  # (K, width) sort keys
    valid = torch.arange(width, device=counts.device) < counts[:, None]  # (K, width)
    keys = keys.masked_fill(~valid, 2.0)  # padding sorts after every real position
    order = keys.topk(n, dim=1, largest=False).indices  # (K, n) random order, valid first
    cyclic = torch.arange(n, device=counts.device) % counts[:, None]  # (K, n)
    return order.gather(1, cyclic)


class _Pool:
    """Real images of the classes to condense, on the device, with per-class lookup."""

    def __init__(self, real: torch.Tensor, labels: torch.Tensor, classes: list[int],
                 device: torch.device):
        labels = labels.to(device=device, dtype=torch.long)
        group = siamese_slots(labels, classes)  # (N,) class position, -1 for other classes
        keep = group >= 0
        order = torch.argsort(group.masked_fill(~keep, len(classes)), stable=True)
        counts = torch.bincount(group[keep], minlength=len(classes))  # (K,)
        # Host copies of the counts, taken once before the loop (needed for shapes).
        counts_host = counts.cpu()
        missing = [c for c, n in zip(classes, counts_host.tolist()) if n == 0]
        if missing:
            raise ValueError(f"budget names classes {missing} that have no real images")
        self.images = real.to(device=device, dtype=torch.float32)  # (N, C, H, W), moved once
        self.order = order[: int(counts_host.sum())]  # (N_kept,) image indices, grouped by class
        self.starts = torch.cumsum(counts, 0) - counts  # (K,) first position of each class
        self.counts = counts  # (K,)
        self.max_count = int(counts_host.max())
        self.mean_count = float(counts_host.float().mean())

    def sample(self, n: int) -> torch.Tensor:
        """(K * n, C, H, W) images, n of every class, grouped by class."""
        pos = _positions(self.counts, n, max(self.max_count, n))  # (K, n)
        index = self.order[self.starts[:, None] + pos]  # (K, n) image indices
        return self.images[index.flatten()]


# --- the method -----------------------------------------------------------------------

def condense(real: torch.Tensor, labels: torch.Tensor, budget: dict[int, int],
             device: torch.device | str, settings: DataDAMSettings = DataDAMSettings(), *,
             init: tuple[torch.Tensor, torch.Tensor] | None = None, progress: bool = True,
             stats: dict | None = None, prefix_sizes: dict[int, list[int]] | None = None,
             guide: nn.Module | None = None, network: nn.Module | None = None,
             checkpoint: LoopCheckpoint | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Condense `real` into `budget` synthetic images per class with DataDAM (or DM).

    Args:
        real: (N, C, H, W) normalised real images, on any device. Images of classes outside
            `budget` are ignored; images containing NaN or inf are dropped with a warning.
        labels: (N,) long labels of `real`.
        budget: {class: number of synthetic images}; budgets may differ per class.
        device: where the work happens and where the result lives.
        settings: DataDAMSettings (`dm_settings()` for DM).
        init: optional (images, labels) to start from, laid out like the result.
        progress: show a tqdm progress bar with the mean loss.
        stats: optional dict filled with "setup_s" and "match_s" (seconds), "iterations"
            (done and kept), "iteration_budget" (after `real_epochs`), "loss_curve" (the
            mean loss of every checked span), "loss" (mean over the last checked span), "stopped" (True if a
            non-finite loss or image ended the run early), "real_chunk", "lr_images"
            (the rate used, after `lr_images_side`) and, with `network`, "stages" (the
            modules whose outputs the SAM term matched).
        prefix_sizes: with `settings.nested`, {class: sizes}: the first s images of the
            class are matched as a set for every s given, beside the whole budget.
        guide: with `settings.guide_weight > 0`, a network with `embed(x) -> (N, D)`
            (e.g. the replay learner) whose normalised embeddings are matched too; it is
            copied and frozen, never trained.
        network: with `settings.network == "learner"`, the model whose architecture the
            random networks take (copied, never changed): SAM at its intermediate stages,
            MMD on its embedding (`stage_network`; the rule in `ccl.models.stages`).
        checkpoint: optional `LoopCheckpoint`: the iterations' progress (iteration,
            images, their optimiser's momentum, the last finite snapshot, the loss
            sums) is handed to it when a save is due, and taken back from it to resume.

    Returns:
        (sum(budget.values()), C, H, W) float32 images on `device`, grouped by class in the
        order of `budget`, and their (M,) long labels. Every step is followed by a
        projection onto the per-channel range of the real images, so the result is valid
        pixels (the papers leave images unbounded; unbounded ones cannot be stored as
        uint8 and are not what a picture of them shows). If the loss or the images become
        non-finite, optimisation stops with a warning and the last finite snapshot (taken
        at the previous progress check) is returned.
    """
    began = now(device)
    device = torch.device(device)
    classes, sizes = _check_budget(budget)
    if real.dim() != 4 or labels.shape != (real.shape[0],):
        raise ValueError(f"real must be (N, C, H, W) with (N,) labels, got {tuple(real.shape)} "
                         f"and {tuple(labels.shape)}")
    real, labels = _drop_non_finite(real, labels)
    pool = _Pool(real, labels, classes, device)
    shape = tuple(real.shape[1:])
    syn_labels = torch.tensor(classes).repeat_interleave(torch.tensor(sizes)).to(device)  # (M,)
    images = _initial_images(pool, sizes, syn_labels, settings, init, shape, device)  # (M, C, H, W)
    bounds = channel_range(pool.images)  # (1, C, 1, 1) each
    images = project_(images, bounds)
    groups = _SyntheticGroups(classes, sizes, prefix_sizes if settings.nested else None, device)
    if settings.guide_weight > 0 and guide is None:
        raise ValueError("DataDAMSettings.guide_weight > 0 needs a guide network (guide=...)")
    guide = _frozen_copy(guide, device) if settings.guide_weight > 0 else None
    _check_network(settings, network)
    info = {"setup_s": now(device) - began, "real_chunk": real_chunk(settings, device, network),
            "iteration_budget": iteration_budget(settings, pool.mean_count)}
    if settings.nested:
        info["matched_sizes"] = {str(c): s for c, s in groups.sizes.items()}

    began = now(device)
    images, progress_info = _optimise(pool, images, groups, bounds, guide, settings,
                                      info["real_chunk"], info["iteration_budget"], progress,
                                      checkpoint or LoopCheckpoint(), network)
    info.update(progress_info, match_s=now(device) - began)
    if stats is not None:
        stats.update(info)
    return images, syn_labels


class _SyntheticGroups:
    """Which synthetic images each matched statistic averages over.

    Without prefixes there is one group per class. With them, class k has one group per
    size s in {budget} + prefix_sizes[k] (its first s images), all compared with the same
    real target; each group's term is weighted 1 / (number of sizes of its class), so a
    class weighs the same in the loss whatever its number of sizes.
    """

    def __init__(self, classes: list[int], sizes: list[int], prefix_sizes: dict[int, list[int]] | None,
                 device: torch.device):
        k, m = len(classes), sum(sizes)
        self.image_class = torch.repeat_interleave(torch.arange(k), torch.tensor(sizes)).to(device)  # (M,)
        starts = [sum(sizes[:i]) for i in range(k)]
        self.sizes: dict[int, list[int]] = {}  # class -> matched sizes, largest first
        rows, target, weight = [], [], []
        for i, (c, n) in enumerate(zip(classes, sizes)):
            nested = sorted({n, *(s for s in (prefix_sizes or {}).get(c, []) if 1 <= s < n)}, reverse=True)
            self.sizes[c] = nested
            for s in nested:
                row = torch.zeros(m)
                row[starts[i]:starts[i] + s] = 1.0
                rows.append(row)
                target.append(i)
                weight.append(1.0 / len(nested))
        self.membership = torch.stack(rows).to(device)  # (G, M)
        self.target = torch.tensor(target, device=device)  # (G,) class position of each group
        self.weight = torch.tensor(weight, device=device)  # (G,)

    def distance(self, real_means: torch.Tensor, syn_means: torch.Tensor) -> torch.Tensor:
        """sum_g weight_g || real_means[target_g] - syn_means[g] ||^2 for (K, D) and (G, D) means."""
        return ((real_means[self.target] - syn_means).pow(2).sum(1) * self.weight).sum()


def _check_network(settings: DataDAMSettings, network: nn.Module | None) -> None:
    if settings.network == "learner" and network is None:
        raise ValueError("DataDAMSettings.network = 'learner' needs the learner (network=...); "
                         "ccl.CondensedReplay hands it over")
    if settings.network != "learner" and network is not None:
        raise ValueError(f"network= is the learner of DataDAMSettings.network = 'learner'; "
                         f"the settings say {settings.network!r}")
    if network is not None and settings.real_chunk and _has_batch_norm(network):
        raise ValueError(f"DataDAMSettings.real_chunk must be None or 0 with a network that has BatchNorm "
                         f"({type(network).__name__}): chunks would change its batch statistics")


def _frozen_copy(guide: nn.Module, device: torch.device) -> nn.Module:
    guide = copy.deepcopy(guide).to(device).eval()  # eval: no BatchNorm statistics updates
    guide = guide.to(memory_format=_memory_format(device))  # as the random networks (12% faster on CPU)
    return guide.requires_grad_(False)  # gradients reach the images only


def _optimise(pool: _Pool, images: torch.Tensor, groups: _SyntheticGroups,
              bounds: tuple[torch.Tensor, torch.Tensor], guide: nn.Module | None,
              settings: DataDAMSettings, chunk: int, iterations: int,
              progress: bool, checkpoint: LoopCheckpoint,
              network: nn.Module | None = None) -> tuple[torch.Tensor, dict]:
    """The DataDAM iterations; returns the last finite images and what happened. Resumes
    from, and saves to, `checkpoint` (see `LoopCheckpoint`). The random networks are
    ccl's ConvNet, or `network`'s architecture where it is given."""
    device = images.device
    k = len(groups.sizes)
    real_group = torch.arange(k, device=device).repeat_interleave(settings.real_batch)  # (K*B,)
    images = images.detach().clone().requires_grad_(True)  # (M, C, H, W), what learns
    lr = image_lr(settings, images.shape[-2:])
    optimizer = torch.optim.SGD([images], lr=lr, momentum=settings.momentum)
    shape = tuple(images.shape[1:])
    net = matching_network(k, shape, settings, device) if network is None else stage_network(network, shape, device)

    snapshot = images.detach().clone()
    info = {"iterations": 0, "loss": float("nan"), "stopped": False, "lr_images": lr, "loss_curve": []}
    loss_sum = torch.zeros((), device=device)  # summed on the device between checks
    since_check = 0
    start = 0
    saved = checkpoint.resume()
    if saved is not None:
        problem = progress_problem(saved, settings.loop, images, iterations)
        if problem:
            raise ValueError(f"the saved DataDAM progress does not fit this condensation: {problem}")
        with torch.no_grad():
            images.copy_(saved["images"])
        optimizer.load_state_dict(saved["optimizer"])
        snapshot, loss_sum = saved["snapshot"].to(device), saved["loss_sum"].to(device)
        since_check, start, info = saved["since_check"], saved["iteration"], dict(saved["info"])
    if network is not None:
        info["stages"] = [tap.module for tap in net.taps]  # where the SAM term matched attention
    name = "DataDAM" if settings.sam_weight > 0 else "DM"
    classes = ",".join(str(c) for c in groups.sizes)
    bar = tqdm(total=iterations, initial=start, disable=not progress, desc=f"{name} classes {classes}", leave=False)
    began = now(device)
    try:
        for it in range(start, iterations):
            reinitialise(net)
            loss = _iteration_loss(net, pool, images, real_group, groups, k, settings, chunk, guide)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            project_(images, bounds)  # projected gradient descent: back into the pixel range
            if it == start and network is not None:  # the learner's cost, not ConvNet's: say it
                announce_cost(f"{name} classes {classes}", now(device) - began, iterations - start)
            loss_sum = loss_sum + loss.detach()
            since_check += 1
            if since_check >= settings.progress_every or it == iterations - 1:
                # The only host synchronisation: the summed loss and a finiteness flag.
                finite = torch.isfinite(loss_sum) & torch.isfinite(images.detach()).all()
                total, ok = torch.stack([loss_sum, finite.to(loss_sum.dtype)]).tolist()
                mean_loss = total / since_check
                if not ok:
                    warnings.warn(f"{name} stopped at iteration {it + 1}: the loss or the images "
                                  f"became non-finite (mean loss {mean_loss}); returning the images "
                                  f"of iteration {info['iterations']}. Lower lr_images or the loss "
                                  "weights.", RuntimeWarning, stacklevel=3)
                    info["stopped"] = True
                    break
                snapshot = images.detach().clone()
                info.update(iterations=it + 1, loss=mean_loss)
                info["loss_curve"].append(round(mean_loss, 6))
                bar.update(since_check)
                bar.set_postfix(loss=f"{mean_loss:.4g}")
                loss_sum = torch.zeros((), device=device)
                since_check = 0
            if it < iterations - 1 and checkpoint.due():
                checkpoint.save({"loop": settings.loop, "iteration": it + 1, "images": images.detach(),
                                 "optimizer": optimizer.state_dict(), "snapshot": snapshot, "loss_sum": loss_sum,
                                 "since_check": since_check, "info": info})
    finally:
        bar.close()
    return snapshot, info


def iteration_budget(settings: DataDAMSettings, real_per_class: float) -> int:
    """Iterations for classes of `real_per_class` real images on average: `iterations`,
    or fewer with `real_epochs` (that many passes over the real images, at least one)."""
    if not settings.real_epochs:
        return settings.iterations
    # round first: 6.4 passes of 1,000 images in batches of 64 are 100 iterations, not 101
    passes = math.ceil(round(settings.real_epochs * real_per_class / settings.real_batch, 6))
    return min(settings.iterations, max(1, passes))


def image_lr(settings: DataDAMSettings, size: tuple[int, int]) -> float:
    """The images' SGD rate at (H, W): lr_images, scaled by area if lr_images_side is set."""
    side = settings.lr_images_side
    return settings.lr_images * (size[0] * size[1] / side ** 2 if side else 1.0)


def _iteration_loss(net: ConvNet | Tapped, pool: _Pool, images: torch.Tensor, real_group: torch.Tensor,
                    groups: _SyntheticGroups, k: int, settings: DataDAMSettings,
                    chunk: int = 0, guide: nn.Module | None = None) -> torch.Tensor:
    """The DataDAM loss of one iteration with the current random network."""
    real = pool.sample(settings.real_batch)  # (K * B, C, H, W), grouped by class
    syn = images  # (M, C, H, W)
    if settings.dsa:
        # Siamese: one draw, one slot per class, shared by real and synthetic images.
        draw = sample_draw(k, settings.dsa_settings, images.device)
        real = apply(real, draw, real_group)
        syn = apply(syn, draw, groups.image_class)
    fmt = _memory_format(images.device)
    real, syn = real.contiguous(memory_format=fmt), syn.contiguous(memory_format=fmt)
    sam = settings.sam_weight > 0
    g = groups.membership.shape[0]
    with torch.no_grad():  # real statistics are targets: no graph, activations freed early
        real_maps, real_embed = matching_statistics(net, real, real_group, k, settings.p, sam,
                                                    chunk, settings.compile)
    syn_maps, syn_embed = matching_statistics(net, syn, groups.membership, g, settings.p, sam,
                                              compiled=settings.compile)
    # = mmd_weight * mmd_loss(...) + sam_weight * sam_loss(...) on the raw features
    # (tests/test_datadam.py checks the equality); here on class means directly.
    loss = settings.mmd_weight * groups.distance(real_embed, syn_embed)
    for real_map, syn_map in zip(real_maps, syn_maps):
        loss = loss + settings.sam_weight * groups.distance(real_map, syn_map)
    if guide is not None:
        with torch.no_grad():
            real_guide = class_means(nn.functional.normalize(guide.embed(real), dim=1), real_group, k)
        syn_guide = class_means(nn.functional.normalize(guide.embed(syn), dim=1), groups.membership, g)
        loss = loss + settings.guide_weight * groups.distance(real_guide, syn_guide)
    return loss


def _check_budget(budget: dict[int, int]) -> tuple[list[int], list[int]]:
    if not budget:
        raise ValueError("budget is empty: give {class: number of images}")
    classes, sizes = [int(c) for c in budget], [int(n) for n in budget.values()]
    bad = {c: n for c, n in zip(classes, sizes) if n < 1}
    if bad:
        raise ValueError(f"every class in the budget needs at least one image, got {bad}")
    if min(classes) < 0:
        raise ValueError(f"class labels must be >= 0, got {classes}")
    return classes, sizes


def _drop_non_finite(real: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop real images containing NaN or inf (one check before the loop), with a warning."""
    finite = torch.isfinite(real.flatten(1)).all(dim=1)  # (N,)
    if bool(finite.all()):
        return real, labels
    dropped = int((~finite).sum())
    warnings.warn(f"DataDAM: dropping {dropped} real image(s) with NaN or inf values",
                  RuntimeWarning, stacklevel=3)
    return real[finite], labels[finite.to(labels.device)]


def _initial_images(pool: _Pool, sizes: list[int], syn_labels: torch.Tensor,
                    settings: DataDAMSettings, init: tuple[torch.Tensor, torch.Tensor] | None,
                    shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """Starting synthetic images (M, C, H, W), grouped by class in budget order."""
    m = sum(sizes)
    if init is not None:
        images, init_labels = init
        if tuple(images.shape) != (m, *shape):
            raise ValueError(f"init images must have shape {(m, *shape)} to match the budget, "
                             f"got {tuple(images.shape)}")
        if not torch.equal(init_labels.to(device=device, dtype=torch.long), syn_labels):
            raise ValueError("init labels must be grouped by class in the order of the budget")
        images = images.detach().to(device=device, dtype=torch.float32).clone()
        if not bool(torch.isfinite(images).all()):
            raise ValueError("init images contain NaN or inf")
        return images
    if settings.init == "noise":
        return torch.randn(m, *shape, device=device)
    # Random real images of each class; repeated where a class has fewer than its budget.
    top = max(sizes)
    pos = _positions(pool.counts, top, max(pool.max_count, top))  # (K, top)
    keep = torch.arange(top)[None, :] < torch.tensor(sizes)[:, None]  # (K, top) first sizes[k]
    index = pool.order[(pool.starts[:, None] + pos)[keep.to(device)]]  # (M,) grouped by class
    return pool.images[index].clone()
