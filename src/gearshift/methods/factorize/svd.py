"""The SVD family: truncated SVD, Fisher-weighted SVD, whitened SVD, and a shared basis.

Every variant is one weighted truncated SVD of a (possibly stacked) weight matrix ``W``
(N x m), run in float64:

    A = diag(r) W S            r: row weights (FWSVD), S: input whitening (SVD-LLM)
    A ~ P_k diag(s_k) Q_k^T     (exact truncated SVD, the k largest singular values)
    U = diag(1/r) P_k diag(sqrt s_k),   V = diag(sqrt s_k) Q_k^T S^-1

so ``W ~ U V`` with the singular values split evenly between the factors. With ``S`` a
square root of the calibration inputs' ``X^T X`` (``S S^T = X^T X``), the dropped singular
values are exactly the output error ``||X W^T - X (U V)^T||_F`` (SVD-LLM's truncation-aware
whitening). Stacking several layers' matrices (rows on top of each other) yields one ``V``
shared by all of them (Basis Sharing); each layer keeps its own rows of ``U``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger("gearshift.factorize")

DAMPING_STEPS = 4  # damping tried: d, 100 d, 1e4 d, ... up to 1e-2 of the mean diagonal


@dataclass
class Whitening:
    """A square root ``S`` of a Gram matrix ``G = S S^T`` (m x m) and its inverse, float64.

    ``how`` says how it was obtained: ``cholesky``, ``cholesky, damping <x>`` (a multiple of
    the identity was added) or ``eigendecomposition`` (clamped eigenvalues).
    """

    factor: torch.Tensor
    inverse: torch.Tensor
    how: str


def whitening_from_gram(gram: torch.Tensor, damping: float = 1e-6, name: str = "") -> Whitening:
    """Return a :class:`Whitening` of ``gram``, robust when it is not positive definite.

    Tries Cholesky on ``G``; then on ``G + eps * mean(diag G) * I`` for eps = ``damping``,
    100x larger, ... up to 1e-2; then falls back to the eigendecomposition with eigenvalues
    clamped to 1e-10 of the largest. Every fallback is logged (a warning naming ``name``).
    """
    g = gram.double()
    g = (g + g.t()) / 2
    m = g.shape[0]
    eye = torch.eye(m, dtype=torch.float64, device=g.device)
    scale = float(g.diagonal().mean()) if m else 0.0
    finite = bool(torch.isfinite(g).all())
    if not finite or scale <= 0:
        logger.warning(
            "%s: X^T X is %s; whitening skipped (plain SVD for this matrix)",
            name or "matrix",
            "zero" if finite else "not finite",
        )
        return Whitening(eye, eye, "identity (no usable calibration inputs)")
    factor, info = torch.linalg.cholesky_ex(g)
    if int(info) == 0:
        return Whitening(factor, _lower_inverse(factor, eye), "cholesky")
    eps = damping
    for _ in range(DAMPING_STEPS):
        if eps > 1e-2:
            break
        factor, info = torch.linalg.cholesky_ex(g + eps * scale * eye)
        if int(info) == 0:
            logger.info(
                "%s: X^T X is not positive definite; added %.0e x mean diagonal x I "
                "before Cholesky",
                name or "matrix",
                eps,
            )
            return Whitening(factor, _lower_inverse(factor, eye), f"cholesky, damping {eps:.0e}")
        eps *= 100
    values, vectors = torch.linalg.eigh(g)
    floor = max(float(values.max()), 1e-300) * 1e-10
    clamped = values.clamp_min(floor)
    logger.warning(
        "%s: Cholesky of X^T X failed even with damping; using its "
        "eigendecomposition (%d eigenvalues clamped to %.1e)",
        name or "matrix",
        int((values < floor).sum()),
        floor,
    )
    root = clamped.sqrt()
    return Whitening(vectors * root, (vectors / root).t(), "eigendecomposition")


def _lower_inverse(factor: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    return torch.linalg.solve_triangular(factor, eye, upper=False)


def row_weights_from_importance(importance: torch.Tensor, floor: float) -> torch.Tensor:
    """Row weights ``sqrt(max(I_i / mean(I), floor))`` from per-row importances ``I``.

    Used for Fisher importances (FWSVD: the sum of squared gradients of each row) and for
    token counts (the embedding's inputs are one-hot, so its ``X^T X`` is their diagonal).
    """
    imp = importance.double().clamp_min(0)
    mean = float(imp.mean())
    if mean <= 0:
        return torch.ones_like(imp)
    return (imp / mean).clamp_min(floor).sqrt()


def truncated_svd(a: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P_k diag(sqrt s_k), diag(sqrt s_k) Q_k^T)`` of ``a`` (float64), the top ``rank``
    singular triplets.

    Computed from the eigendecomposition of the smaller Gram matrix (``a^T a`` or
    ``a a^T``), which is several times faster than LAPACK's SVD on tall matrices (the
    embedding, stacked groups) and, in float64, exact to far below the weights' float32
    precision. Directions with a zero singular value contribute nothing.
    """
    flip = a.shape[0] < a.shape[1]
    if flip:
        a = a.t()
    values, vectors = torch.linalg.eigh(a.t() @ a)  # ascending
    q = vectors.flip(1)[:, :rank]
    s = values.flip(0)[:rank].clamp_min(0).sqrt()
    root = s.sqrt()
    live = (
        s > s.max() * 1e-12
        if s.numel() and float(s.max()) > 0
        else torch.zeros_like(s, dtype=torch.bool)
    )
    safe = torch.where(live, root, torch.ones_like(root))
    left = (a @ q) / safe * live  # P_k s_k / sqrt(s_k)
    right = (root * live).unsqueeze(1) * q.t()
    if flip:  # a^T = Q S P^T
        return right.t(), left.t()
    return left, right


def low_rank_factors(
    weight: torch.Tensor,
    rank: int,
    row_weights: torch.Tensor | None = None,
    whitening: Whitening | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(U, V)`` with ``U`` (N x rank), ``V`` (rank x m) and ``U V ~ weight``.

    Minimises ``||diag(row_weights) (W - U V) S||_F`` exactly (see the module docstring);
    with neither weights nor whitening it is the truncated SVD (the best rank-``rank``
    approximation in Frobenius norm). Computed in float64, returned in ``weight``'s dtype.
    """
    n, m = weight.shape
    if not 1 <= rank <= min(n, m):
        raise ValueError(f"rank {rank} must be between 1 and min{tuple(weight.shape)}")
    a = weight.double()
    if row_weights is not None:
        a = a * row_weights.double().unsqueeze(1)
    if whitening is not None:
        a = a @ whitening.factor
    u, v = truncated_svd(a, rank)
    if row_weights is not None:
        u = u / row_weights.double().unsqueeze(1)
    if whitening is not None:
        v = v @ whitening.inverse
    return u.to(weight.dtype), v.to(weight.dtype)
