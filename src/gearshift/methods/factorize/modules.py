"""The modules offline compression swaps into a model, and the encoder it trains.

The compressed forms themselves (:class:`LowRankLinear`, :class:`LowRankEmbedding`,
:class:`DecodedLinear`, :class:`DecodedEmbedding`, :class:`RowDecoder`) are the runtime's
(:mod:`gearshift.runtime.forms`), so any model edit loads without this package; only the
autoencoder's :class:`RowEncoder`, used in training and then dropped, lives here.
"""

from __future__ import annotations

import torch
from torch import nn

from gearshift.runtime.forms import (
    COMPRESSED_TYPES,
    DecodedEmbedding,
    DecodedLinear,
    LowRankEmbedding,
    LowRankLinear,
    RowDecoder,
    restore_norms,
)

__all__ = [
    "COMPRESSED_TYPES",
    "DecodedEmbedding",
    "DecodedLinear",
    "LowRankEmbedding",
    "LowRankLinear",
    "RowDecoder",
    "RowEncoder",
    "restore_norms",
]


class RowEncoder(nn.Module):
    """``m -> d`` with LeakyReLU: a weight row to its code (used in training, then dropped)."""

    def __init__(self, row_size: int, code_size: int, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(row_size, code_size), nn.LeakyReLU(negative_slope))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.net(rows)
