"""Where any network's stages are, and their outputs caught as it runs.

DataDAM matches attention maps at a network's intermediate stages and its embedding.
ccl's ConvNet names its blocks; a user's model (a torchvision ResNet, a custom CNN) does
not, so its stages are found by one rule, on one forward pass of a probe batch with a
hook on every module (`find_stages`):

1. The embedding is `model.embed(x)` where the model has that method (ccl's ConvNet and
   ResNet-18), otherwise the input of its last registered `nn.Linear`, flattened (as
   `ccl.CondensedReplay` takes a model's features).
2. The 4-D outputs (N, C, H, W) that modules produce before the embedding are listed in
   the order the modules finish (a block finishes after the layers inside it).
3. Where the spatial size (H, W) changes from one output to the next, the earlier one
   ends a stage: the last module to finish at a resolution, i.e. the map just before a
   downsampling. Of nested modules that finish together (a residual block's last ReLU,
   the block, its layer) that is the outermost: `layer1`, not `layer1.1.relu`.
4. The last output ends a stage too, unless it is the embedding itself, flattened (the
   map ConvNet flattens, or a ResNet's global average pool at 1x1).

For ccl's ConvNet on 32x32 images this gives the ReLU output of every block (before its
pooling, where the reference code hooks); for torchvision's ResNet-18 the outputs of
`layer1` .. `layer4`. A module called several times in one pass is told apart by its
call (`Tap.call`). The stages are a property of the architecture and the input size, so
they are found once and hold for every re-initialisation of the same network.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

EMBED = "embed"  # StagePlan.embedding when the model's own embed(x) gives the embedding


@dataclass(frozen=True)
class Tap:
    """One stage's output: the `call`-th output (0 = first) of module `module` in a forward pass."""

    module: str                 # its name in model.named_modules()
    call: int
    size: tuple[int, int]       # (H, W) of the output, for the probe's input size


@dataclass(frozen=True)
class StagePlan:
    """A network's stages (input to output) and where its embedding comes from."""

    stages: tuple[Tap, ...]
    embedding: str              # EMBED, or the name of the nn.Linear whose input is the embedding
    embedding_dim: int


def last_linear(model: nn.Module) -> str | None:
    """The name of the last nn.Linear registered in `model` (its head, for a Sequential), or None."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


def find_stages(model: nn.Module, example: torch.Tensor) -> StagePlan:
    """The stages of `model` by the rule in this module's docstring.

    Runs one forward pass of `example` without gradients, in eval mode (the shapes do not
    depend on the mode, and BatchNorm's running statistics stay untouched); every
    module's train/eval mode is put back afterwards.

    Args:
        model: any nn.Module taking (N, C, H, W) images.
        example: (N, C, H, W) images of the size the stages are for (two are enough).

    Raises:
        ValueError: the model has neither `embed` nor an nn.Linear to take the embedding from.
    """
    has_embed = callable(getattr(model, "embed", None))
    head = None if has_embed else last_linear(model)
    if not has_embed and head is None:
        raise ValueError(f"{type(model).__name__} has neither an embed(x) method nor an nn.Linear head "
                         "to take its embedding from")
    outputs: list[tuple[str, int, torch.Tensor]] = []  # 4-D outputs before the embedding, as modules finish
    calls: Counter[str] = Counter()
    caught: list[torch.Tensor] = []  # the head's input, once it is called

    def after(name: str):
        def hook(module, args, output):
            call = calls[name]
            calls[name] += 1
            if not caught and isinstance(output, torch.Tensor) and output.dim() == 4:
                outputs.append((name, call, output))
        return hook

    handles = [module.register_forward_hook(after(name)) for name, module in model.named_modules() if name]
    if head is not None:
        handles.append(model.get_submodule(head).register_forward_pre_hook(
            lambda module, args: caught.append(args[0]) if not caught else None))
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            embedding = model.embed(example) if head is None else _head_input(model, example, caught, head)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    embedding = embedding.flatten(1)  # (N, D)
    ends = [i for i, (_, _, f) in enumerate(outputs)
            if i + 1 == len(outputs) or outputs[i + 1][2].shape[-2:] != f.shape[-2:]]
    if ends and _is_embedding(outputs[ends[-1]][2], embedding):
        ends = ends[:-1]  # the embedding's own map: matched by the embedding term
    stages = tuple(Tap(outputs[i][0], outputs[i][1], tuple(outputs[i][2].shape[-2:])) for i in ends)
    return StagePlan(stages, EMBED if head is None else head, embedding.shape[1])


def _head_input(model: nn.Module, example: torch.Tensor, caught: list[torch.Tensor], head: str) -> torch.Tensor:
    model(example)
    if not caught:
        raise ValueError(f"{type(model).__name__}'s forward pass never calls its last nn.Linear ({head}) "
                         "to take the embedding from: give the model an embed(x) method")
    return caught[0]


def _is_embedding(f: torch.Tensor, embedding: torch.Tensor) -> bool:
    flat = f.flatten(1)
    return flat.shape == embedding.shape and torch.equal(flat, embedding)


class Tapped(nn.Module):
    """`model` run for its embedding, handing the outputs of `taps` to a function as the
    forward pass makes them (forward hooks that stay on `model`: give it a copy of yours).

    The function may reduce a stage's output at once (to class sums of its attention
    map), so that under no_grad no stage's activation outlives the pass that needs it.
    """

    def __init__(self, model: nn.Module, taps: tuple[Tap, ...], embedding: str):
        super().__init__()
        self.model = model
        self.taps = taps
        self.embedding = embedding
        self._wanted = {(t.module, t.call) for t in taps}
        self._calls: Counter[str] = Counter()
        self._on_stage: Callable[[torch.Tensor], None] | None = None
        self._head_input: torch.Tensor | None = None
        for name in sorted({t.module for t in taps}):
            model.get_submodule(name).register_forward_hook(self._stage_hook(name))
        if embedding != EMBED:
            model.get_submodule(embedding).register_forward_pre_hook(self._head_hook)

    def _stage_hook(self, name: str):
        def hook(module, args, output):
            call = self._calls[name]
            self._calls[name] += 1
            if self._on_stage is not None and (name, call) in self._wanted:
                self._on_stage(output)
        return hook

    def _head_hook(self, module, args):
        if self._head_input is None:  # its first call, as `find_stages` took it
            self._head_input = args[0]

    def forward(self, x: torch.Tensor, on_stage: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
        """(N, D) embedding of x; `on_stage(output)` is called for every tap, in order."""
        self._calls.clear()
        self._on_stage = on_stage
        try:
            if self.embedding == EMBED:
                embedding = self.model.embed(x)
            else:
                self.model(x)
                embedding = self._head_input
        finally:
            self._on_stage, self._head_input = None, None
        return embedding.flatten(1)
