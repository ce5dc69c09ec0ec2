"""The weight forms a model edit puts in place of a dense Linear or embedding.

- :class:`LowRankLinear`: ``W ~ U V`` run as two smaller matmuls, ``x -> V -> U (+ b)``;
  stores and computes ``r (n + m)`` instead of ``n m``. ``V`` (the input-side *basis*) may be
  one module shared by several layers (Basis Sharing).
- :class:`LowRankEmbedding`: a ``vocab x r`` table and an ``r -> E`` projection (factorize's
  SVD of the word embedding and slim's embedding rank are this one module,
  ``ModelConfig.word_rank``).
- :class:`DecodedLinear` / :class:`DecodedEmbedding`: the autoencoder's form: codes ``Z``
  (one row per weight row), a :class:`RowDecoder` (possibly shared by several layers) and the
  row norms. The weight is rebuilt once, ``w_i = D(z_i) ||w_i|| / ||D(z_i)||``, and cached:
  forward FLOPs equal the dense module's; what shrinks is what is stored.

int8 weights are :class:`gearshift.runtime.quant.Int8Linear`. Which module of a model has
which form is recorded in ``ModelConfig.forms`` (see :mod:`gearshift.runtime.edits`).

Shapes: a Linear's weight is ``W`` (n x m): n = out_features rows of m = in_features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LowRankLinear(nn.Module):
    """``y = U (V x) + b`` with ``V`` (r x m) the basis and ``U`` (n x r) the coefficients."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        basis: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        if basis is not None and (basis.in_features, basis.out_features) != (in_features, rank):
            raise ValueError(
                f"shared basis maps {basis.in_features} -> {basis.out_features}, "
                f"this module needs {in_features} -> {rank}"
            )
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.basis = basis if basis is not None else nn.Linear(in_features, rank, bias=False)
        self.coefficients = nn.Linear(rank, out_features, bias=bias)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.coefficients.bias

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``U V`` (n x m), computed on each access (for analysis, not inference)."""
        return self.coefficients.weight @ self.basis.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.coefficients(self.basis(x))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}"


class LowRankEmbedding(nn.Module):
    """A ``vocab x r`` table followed by an ``r -> d`` projection (no bias).

    A lookup costs no FLOPs but the projection does: ``2 r d`` per token. The dense table is
    available as :attr:`weight` (for tied LM heads), computed on each access.
    """

    def __init__(
        self, num_embeddings: int, embedding_dim: int, rank: int, padding_idx: int | None = None
    ) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.rank = num_embeddings, embedding_dim, rank
        self.padding_idx = padding_idx
        self.codes = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx)
        self.projection = nn.Linear(rank, embedding_dim, bias=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.projection(self.codes.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.projection(self.codes(ids))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings} x {self.embedding_dim}, rank={self.rank}"


class RowDecoder(nn.Module):
    """``d -> 2d -> 4d -> m`` (widths configurable), LeakyReLU between, tanh at the end."""

    def __init__(
        self,
        code_size: int,
        row_size: int,
        widths: tuple[int, ...] | list[int] = (2, 4),
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        self.code_size, self.row_size = code_size, row_size
        self.widths, self.negative_slope = list(widths), negative_slope
        sizes = [code_size, *(w * code_size for w in widths)]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.LeakyReLU(negative_slope)]
        layers += [nn.Linear(sizes[-1], row_size), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.net(codes)

    def spec(self) -> dict:
        """What rebuilds an empty decoder of this shape (saved in gearshift.json)."""
        return {
            "code_size": self.code_size,
            "row_size": self.row_size,
            "widths": self.widths,
            "negative_slope": self.negative_slope,
        }

    @staticmethod
    def num_parameters(
        code_size: int, row_size: int, widths: tuple[int, ...] | list[int] = (2, 4)
    ) -> int:
        """Parameters of a decoder of this shape, without building it (for the budget)."""
        sizes = [code_size, *(w * code_size for w in widths), row_size]
        return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def restore_norms(directions: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """``D(z) * ||w|| / ||D(z)||`` row by row: each rebuilt row gets its stored norm exactly."""
    length = directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return directions * (norms.unsqueeze(-1) / length)


class _Decoded(nn.Module):
    """Shared part of the decoded modules: codes, norms, a decoder, and the cached weight."""

    def __init__(self, rows: int, code_size: int, decoder: RowDecoder, transposed: bool) -> None:
        super().__init__()
        if decoder.code_size != code_size:
            raise ValueError(f"decoder reads codes of size {decoder.code_size}, not {code_size}")
        self.codes = nn.Parameter(torch.zeros(rows, code_size))
        self.norms = nn.Parameter(torch.zeros(rows))
        self.decoder = decoder  # may be the same module object in several layers
        self.transposed = transposed
        self._cache: torch.Tensor | None = None
        self._cache_key: tuple | None = None

    def _key(self) -> tuple:
        tensors = [self.codes, self.norms, *self.decoder.parameters()]
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    def decode(self) -> torch.Tensor:
        """The rebuilt weight, computed now (with gradients when they are enabled)."""
        w = restore_norms(self.decoder(self.codes), self.norms)
        return w.t() if self.transposed else w

    def rebuilt_weight(self) -> torch.Tensor:
        """The weight the forward pass uses: rebuilt with gradients in training mode (so
        fine-tuning trains codes, norms and decoder), else cached.

        The cache is rebuilt when a parameter changed (optimizer step, load_state_dict, a
        move to another device), so it never goes stale.
        """
        if self.training and torch.is_grad_enabled():
            return self.decode()
        key = self._key()
        if self._cache is None or self._cache_key != key:
            # A normal tensor even when first called under inference_mode.
            with torch.inference_mode(False), torch.no_grad():
                self._cache = self.decode().contiguous()
            self._cache_key = key
        return self._cache

    def materialize(self) -> None:
        """Rebuild and cache the weight now (load time), so no later forward pays for it."""
        self._cache = None
        with torch.no_grad():
            self.rebuilt_weight()

    def decode_flops(self) -> int:
        """FLOPs of one rebuild (paid once at load time, not per forward)."""
        sizes = [
            self.decoder.code_size,
            *(w * self.decoder.code_size for w in self.decoder.widths),
            self.decoder.row_size,
        ]
        return 2 * self.codes.shape[0] * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


class DecodedLinear(_Decoded):
    """A Linear whose weight is stored as autoencoder codes; same FLOPs as the dense Linear."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        code_size: int,
        decoder: RowDecoder,
        bias: bool = True,
        transposed: bool = False,
    ) -> None:
        rows, row_size = (in_features, out_features) if transposed else (out_features, in_features)
        if decoder.row_size != row_size:
            raise ValueError(
                f"decoder writes rows of {decoder.row_size}, this weight has {row_size}"
            )
        super().__init__(rows, code_size, decoder, transposed)
        self.in_features, self.out_features, self.code_size = in_features, out_features, code_size
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @property
    def weight(self) -> torch.Tensor:
        return self.rebuilt_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.rebuilt_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, code_size={self.code_size}" + (
            ", transposed" if self.transposed else ""
        )


class DecodedEmbedding(_Decoded):
    """An embedding table stored as autoencoder codes, rebuilt once; lookups as usual."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        code_size: int,
        decoder: RowDecoder,
        padding_idx: int | None = None,
    ) -> None:
        if decoder.row_size != embedding_dim:
            raise ValueError(f"decoder writes rows of {decoder.row_size}, not {embedding_dim}")
        super().__init__(num_embeddings, code_size, decoder, transposed=False)
        self.num_embeddings, self.embedding_dim, self.code_size = (
            num_embeddings,
            embedding_dim,
            code_size,
        )
        self.padding_idx = padding_idx

    @property
    def weight(self) -> torch.Tensor:
        return self.rebuilt_weight()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.rebuilt_weight(), self.padding_idx)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings} x {self.embedding_dim}, code_size={self.code_size}"


COMPRESSED_TYPES = (LowRankLinear, LowRankEmbedding, DecodedLinear, DecodedEmbedding)


def word_logits(word: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Logits of a tied LM head: ``h`` (..., E) against the word embedding's rows.

    A low-rank table is applied factor by factor, ``(h P) C^T`` (``2 n r (E + V)`` FLOPs rather
    than rebuilding the ``V x E`` table); a decoded table uses its cached rebuilt weight."""
    if isinstance(word, LowRankEmbedding):
        return F.linear(h @ word.projection.weight, word.codes.weight)
    return F.linear(h, word.weight)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` is."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def materialize(model: nn.Module) -> None:
    """Rebuild every decoded weight now (done at load time and after compression)."""
    for m in model.modules():
        if isinstance(m, DecodedLinear | DecodedEmbedding):
            m.materialize()
