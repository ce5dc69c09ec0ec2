"""The modules a slim model adds: :class:`ExitHead` (one after every layer) and the
gradient scaling that gradient equilibrium uses."""

from __future__ import annotations

import torch
from torch import nn

from .config import ExitConfig


def mean_of_real_tokens(h: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """(B, n, d) -> (B, d): the mean over the real tokens (``keep``: (B, n) bool, True =
    real; None = all real)."""
    if keep is None:
        return h.mean(dim=1)
    w = keep.to(h.dtype).unsqueeze(-1)
    return (h * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)


class ExitHead(nn.Module):
    """``linear(dropout(tanh(pool(h))))`` (or with a dense layer before the tanh), where
    ``pool`` takes the first token or the mean of the real tokens (``keep``: (B, n) bool,
    True = real; None = all real); (B, C) logits, or (B,) predictions for regression (the
    model head's shapes)."""

    def __init__(self, hidden_size: int, outputs: int, config: ExitConfig) -> None:
        super().__init__()
        self.pool = config.pool
        self.dense = nn.Linear(hidden_size, hidden_size) if config.pooler == "dense" else None
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(hidden_size, outputs)

    def forward(self, h: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = h[:, 0] if self.pool == "first" else mean_of_real_tokens(h, keep)
        if self.dense is not None:
            x = self.dense(x)
        y = self.out(self.dropout(torch.tanh(x)))
        return y.squeeze(-1) if y.shape[-1] == 1 else y  # regression: (B,), like the head


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by ``scale`` on the way back."""
    return x if scale == 1.0 else _ScaleGrad.apply(x, scale)
