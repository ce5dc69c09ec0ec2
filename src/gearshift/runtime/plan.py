"""Attach points: how a method changes one forward pass without patching the runtime.

A :class:`ForwardPlan` is built per call (so two threads can run two different plans on one
model at once) and says:

- ``steps``: the layer loop as a list of :class:`Step` (which parameter block runs, the layer
  index it stands for, its step size). The default is one step of size 1 per layer, which is
  exactly the original model. Parameter-shared models read as an ODE run fewer, larger steps.
- ``update``: the residual update rule ``h <- update(block_fn, h, step)``; the default is
  forward Euler, ``h + a * (block(h) - h)``, which is ``block(h)`` itself when ``a == 1``.
- ``ffn_wrap[layer]``: wraps a layer's feed-forward function (token compression in the FFN).
- ``block_wrap[layer]``: wraps a whole layer (token compression around attention + FFN).
- ``exit``: called after every step; it may return a bool mask of rows that leave the batch
  now (early exit). The loop then continues on the remaining rows only.
- ``run_head``: False skips the task/LM head (a multi-exit model applies its own heads to
  the rows that need them).

Linear layers and the word embedding are ordinary submodules: a method replaces them in
place (low-rank, decoded weights); per-layer widths live in the model config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# (ffn_fn, x, keep) -> y ; keep is the (B, n) bool mask of real tokens or None
FFNWrap = Callable[
    [Callable[[torch.Tensor], torch.Tensor], torch.Tensor, "torch.Tensor | None"], torch.Tensor
]
# (block_fn, h, attention_mask) -> h ; block_fn(h, attention_mask) runs the layer
BlockWrap = Callable[..., torch.Tensor]
# (layer, h, attention_mask, rows) -> bool mask over the active rows that exit now, or None
ExitFn = Callable[..., "torch.Tensor | None"]


@dataclass(frozen=True)
class Step:
    """One pass through a parameter block in the layer loop."""

    block: int
    layer: int  # the original layer index this step ends at (hooks and exits key on it)
    step_size: float = 1.0
    start: int | None = None  # the layer at the step's start time (None: ``layer``)

    @property
    def start_layer(self) -> int:
        """The layer whose own parameters (per-layer LayerNorms) this step uses: the one at
        its start time, where Euler evaluates f."""
        return self.layer if self.start is None else self.start


def euler_update(
    block_fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, step: Step
) -> torch.Tensor:
    """Forward Euler: ``h + a * f(h)`` with ``f(h) = block(h) - h``; exactly ``block(h)`` at a = 1."""
    out = block_fn(h)
    if step.step_size == 1.0:
        return out
    return h + step.step_size * (out - h)


@dataclass
class ForwardPlan:
    """What one forward pass runs; see the module docstring."""

    steps: list[Step] | None = None
    update: Callable[..., torch.Tensor] = euler_update
    ffn_wrap: dict[int, FFNWrap] = field(default_factory=dict)
    block_wrap: dict[int, BlockWrap] = field(default_factory=dict)
    exit: ExitFn | None = None
    run_head: bool = True  # False: return hidden states only (a method applies its own heads)


def default_steps(layer_to_block: list[int]) -> list[Step]:
    """One step of size 1 per layer: the model as it was trained."""
    return [Step(block=b, layer=i) for i, b in enumerate(layer_to_block)]
