"""Closed-form FLOPs of a stack at a setting: what actually runs, per example.

The count follows :func:`gearshift.measure.analytic_flops` (matrix multiplies only,
attention scores and weighted values included) and reads each Linear's cost from the module
that runs, so model edits count as they compute: a low-rank Linear costs
``2 r (in + out)`` per token, a decoded or int8 Linear the dense ``2 in out`` (int8 does the
same multiply-adds in another number format). On top of the base:

- steps: one block evaluation per step (two with Heun), each the cost of the block at the
  step's start layer; layers no step starts at cost nothing;
- plugins: on a covered layer the feed-forward (placement "ffn") or the whole layer
  ("layer") runs on the merged length, plus the plugin's own matmuls
  (:func:`gearshift.methods.plugins.model.plugin_own_flops`);
- exits: an example that leaves after step i ran steps 0..i and the exit heads of each of
  them; one that runs to the end ran every step, every exit but the last, and the head.

The shared test harness checks this count against FLOPs counted on the real forward pass.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from gearshift.measure.flops import _device_of, analytic_flops
from gearshift.runtime.model import Transformer
from gearshift.runtime.stack import Call, Stack


def linear_flops_per_row(module: nn.Module) -> int:
    """Multiply-add FLOPs one input row costs in ``module`` (a Linear of any form)."""
    rank = getattr(module, "rank", None)
    n_in, n_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
    if n_in is None or n_out is None:
        raise TypeError(f"{type(module).__name__} is not a Linear: it has no in/out features")
    if rank is not None:  # low-rank: basis then coefficients
        return 2 * rank * (n_in + n_out)
    return 2 * n_in * n_out


def block_costs(base: Transformer, block: int) -> tuple[int, int, int]:
    """(attention projections per token, FFN per token, heads x head_dim) of one block."""
    b = base.blocks[block]
    shape = base.config.blocks[block]
    proj = ffn = 0
    if shape.num_heads:
        proj = sum(linear_flops_per_row(getattr(b.attn, n)) for n in ("q", "k", "v", "o"))
    if shape.intermediate_size:
        ffn = linear_flops_per_row(b.ffn.inp) + linear_flops_per_row(b.ffn.out)
    return proj, ffn, shape.num_heads * base.config.head_dim


def layer_flops(
    base: Transformer, block: int, n: int, ffn_tokens: int | None = None, tokens: int | None = None
) -> int:
    """One evaluation of ``block`` on ``n`` tokens; ``tokens`` (whole layer) or
    ``ffn_tokens`` (feed-forward only) make it run on a merged length instead."""
    proj, ffn, inner = block_costs(base, block)
    t = n if tokens is None else tokens
    f = t if ffn_tokens is None else ffn_tokens
    return t * proj + 4 * t * t * inner + f * ffn


def base_outside_layers(base: Transformer, n: int) -> int:
    """Embeddings and head: the analytic count minus every default layer's cost."""
    cfg = base.config
    layers = sum(layer_flops(base, cfg.layer_to_block[i], n) for i in range(cfg.num_layers))
    return analytic_flops(cfg, n) - layers


def head_flops(base: Transformer, n: int) -> int:
    """The task head alone."""
    from gearshift.measure.flops import _head_flops

    return _head_flops(base.config, n)


def stack_flops(
    model: Stack | Transformer,
    n: int,
    setting: dict[str, Any] | None = None,
    exit_after: int | None = None,
) -> int:
    """FLOPs of one example of ``n`` real tokens through ``model`` at ``setting`` (default:
    the active one). ``exit_after``: the step index the example leaves after (None: it runs
    every step); exits must be on for it to matter."""
    if isinstance(model, Transformer):
        return analytic_flops(model.config, n)
    base = model.base
    setting = model.active_setting if setting is None else model.resolve(setting)
    plan = model.build_plan(setting, Call(base, 1, _device_of(base), None))
    steps = plan.steps if plan.steps is not None else base.steps
    evals = 2 if getattr(plan.update, "__name__", "") == "heun_update" else 1
    total = base_outside_layers(base, n)
    plugin = _active_plugin(model, setting)
    exits = _active_exits(model, setting)
    last = len(steps) - 1 if exit_after is None else exit_after
    for i, step in enumerate(steps[: last + 1]):
        total += evals * _step_flops(base, step, n, plugin)
        if exits is not None and i < len(steps) - 1:
            total += exits.head_flops(base.config)
    if exits is not None and exit_after is not None and exit_after < len(steps) - 1:
        total -= head_flops(base, n)  # it left at an exit: the head never ran
    return int(total)


def _active_plugin(stack: Stack, setting: dict[str, Any]):
    for name, provider in stack.providers.items():
        if provider.kind == "plugins" and setting.get(name) is not None:
            return provider.plugins[setting[name]]
    return None


def _active_exits(stack: Stack, setting: dict[str, Any]):
    for name, provider in stack.providers.items():
        if provider.kind == "exits" and setting.get(name) is not None:
            return provider
    return None


def _step_flops(base: Transformer, step, n: int, plugin) -> int:
    layer = step.start_layer
    if plugin is None or layer not in plugin.config.layer_indices(base.config.num_layers):
        return layer_flops(base, step.block, n)
    from gearshift.methods.plugins.model import plugin_own_flops

    p = plugin.config
    first = p.keep_first_token
    m = math.ceil((n - 1 if first else n) / p.k)
    mm = m + (1 if first else 0)
    if p.placement == "ffn":
        cost = layer_flops(base, step.block, n, ffn_tokens=mm)
    else:  # the whole layer, attention included, runs on the merged vectors
        cost = layer_flops(base, step.block, n, tokens=mm)
    return cost + plugin_own_flops(p, base.config.hidden_size, n)
