"""One target compression ratio, solved into ranks (SVD family) or code sizes (autoencoder).

The ratio is over *stored parameters* of the compressed matrices: original weights over what
is stored in their place. Biases and LayerNorms stay exact and are counted in neither.

A *unit* is what one factorization solves: one matrix (per-layer mode) or the matrices of
one module type in a group of layers, stacked row-wise (grouped mode). A unit has
``rows`` (the row count of each member; members share the row size ``m``).

- Low rank, one member ``n x m``: stored ``r (n + m)``, so ``r = floor(n m / (CR (n + m)))``
  (the paper's SVD baseline rank).
- Low rank with a basis shared by the members (Basis Sharing): stored ``k m`` (the basis,
  once) ``+ k sum(n_l)`` (each member's coefficients), so
  ``k = floor(sum(n_l) m / (CR (m + sum(n_l))))``; one member gives the formula above.
- Autoencoder: stored ``N d + |decoder(d)| + N`` (codes, one decoder per unit, the ``N`` row
  norms) with ``N = sum(n_l)``; ``d`` is the largest code size whose storage fits
  ``N m / CR`` (the paper's ``CR = n m / (n d + |decoder| + n)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gearshift.errors import ConfigError
from gearshift.methods.factorize.modules import RowDecoder


def low_rank_size(rows: Sequence[int], row_size: int, ratio: float) -> int:
    """The rank (per-layer) or shared basis size (grouped) that stores at most 1/ratio."""
    total = sum(rows)
    k = math.floor(total * row_size / (ratio * (row_size + total)))
    return max(1, min(k, row_size, min(rows)))


def low_rank_stored(rows: Sequence[int], row_size: int, rank: int) -> int:
    """Parameters stored by a low-rank unit: the (shared) basis once, coefficients per member."""
    return rank * row_size + rank * sum(rows)


def code_size(total_rows: int, row_size: int, ratio: float, widths: Sequence[int] = (2, 4)) -> int:
    """The largest autoencoder code size ``d`` whose storage fits ``rows * m / ratio``.

    Raises ConfigError when even ``d = 1`` does not fit (the decoder alone is too large for
    this matrix at this ratio: group layers to share it, or lower the ratio).
    """
    budget = total_rows * row_size / ratio
    if autoencoder_stored(total_rows, row_size, 1, widths) > budget:
        raise ConfigError(
            f"an autoencoder cannot reach ratio {ratio} on {total_rows} rows of {row_size}: "
            f"even code size 1 stores {autoencoder_stored(total_rows, row_size, 1, widths)} > "
            f"{budget:.0f} parameters; use grouped mode (one decoder for many layers) or a "
            "lower ratio"
        )
    lo, hi = 1, row_size
    while lo < hi:  # storage grows with d: binary search for the last d that fits
        mid = (lo + hi + 1) // 2
        if autoencoder_stored(total_rows, row_size, mid, widths) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def autoencoder_stored(
    total_rows: int, row_size: int, code: int, widths: Sequence[int] = (2, 4)
) -> int:
    """Parameters stored by an autoencoder unit: codes, one decoder, one norm per row."""
    return total_rows * code + RowDecoder.num_parameters(code, row_size, widths) + total_rows
