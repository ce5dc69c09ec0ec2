"""Training-free baselines at the same ratio k, as ForwardPlans on the unmodified model.

- :func:`mean_merging`: merge each window of k tokens by their plain mean and restore by
  repeating: the plugin with its learned parts switched off (no parameters). A freshly
  initialised learned plugin computes exactly this (its merger and adapter start at zero).
- :func:`truncation_plan`: keep only the first ceil(n / k) real tokens of every row in every
  layer (the rest is dropped from the computation), the simplest way to cut the length.
"""

from __future__ import annotations

import math

import torch

from gearshift.errors import ConfigError
from gearshift.runtime.config import ModelConfig
from gearshift.runtime.model import Transformer
from gearshift.runtime.modules import AttentionMask
from gearshift.runtime.plan import ForwardPlan

from .config import PluginConfig
from .model import Plugin


def mean_merging(
    base: Transformer | ModelConfig, k: int, placement: str = "ffn", keep_first_token: bool = False
) -> Plugin:
    """The training-free merging baseline: a :class:`Plugin` without parameters."""
    config = PluginConfig(
        k=k, placement=placement, merge="mean", bottleneck=0, keep_first_token=keep_first_token
    )
    return Plugin(config, base)


def truncation_lengths(
    keep: torch.Tensor | None, n: int, k: int, device: torch.device
) -> torch.Tensor:
    """(B,) tokens each row keeps: ceil(real length / k), at least 1."""
    if keep is None:
        return torch.full((1,), math.ceil(n / k), dtype=torch.long, device=device)
    real = keep.long().sum(dim=1)
    return ((real + k - 1) // k).clamp_min(1)


def truncation_plan(base: Transformer | ModelConfig, k: int) -> ForwardPlan:
    """The truncation baseline: every layer computes only the first ceil(n_i / k) tokens of
    row i (n_i its real length); the tokens after them keep their embedding and are never
    attended to. Sequence heads read the first token, which is always kept."""
    config = base.config if isinstance(base, Transformer) else base
    if k < 2:
        raise ConfigError(f"truncation needs k >= 2, got {k}")
    if config.head.kind in ("classification", "regression") and config.head.pool != "first":
        raise ConfigError(
            "truncation keeps the first tokens, but this model's head reads the last one"
        )

    def wrap(block_fn, h: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        n = h.shape[1]
        t = truncation_lengths(mask.keep, n, k, h.device)
        t_max = int(t.max())
        keep = torch.arange(t_max, device=h.device)[None] < t[:, None]  # (B, t_max)
        short = AttentionMask(keep=None if bool(keep.all()) else keep, causal=mask.causal)
        y = block_fn(h[:, :t_max], short)
        return torch.cat([y, h[:, t_max:]], dim=1)

    return ForwardPlan(block_wrap={layer: wrap for layer in range(config.num_layers)})
