"""Slenderization: structured pruning of heads and FFN neurons, and a low-rank word embedding.

Importance is first-order Taylor (Molchanov et al. 2017; Michel et al. 2019): the loss change
from removing a structure is estimated by ``|sum(theta * dL/dtheta)|`` over the parameters
that carry its output: a head's columns of the attention output projection, a neuron's
column of the FFN output projection (exactly the gradient of a gate on that head or neuron).
Scores are summed over calibration batches; the loss is whatever ``loss_fn`` returns: all
exits' losses (the joint calibration COST-EFF argues for) or the last exit's only.

Pruning slices the weights (q/k/v rows and o columns of the kept heads, FFN in rows and out
columns of the kept neurons); hidden size and depth stay, and per-layer widths (0 included)
go into the model config, so the result saves and reloads as an ordinary model. The word
embedding is factorized by truncated SVD into ``(V x r) @ (r x d)``: the runtime's
:class:`~gearshift.runtime.forms.LowRankEmbedding` (``config.word_rank``), the same module
factorize's SVD of the embedding makes. Pruning reads and slices float weights, so it comes
before the edits that change their form (factorize, int8) and refuses a model that has them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gearshift.errors import ConfigError
from gearshift.measure.flops import analytic_flops
from gearshift.runtime.config import BlockShape, ModelConfig
from gearshift.runtime.edits import record_forms
from gearshift.runtime.forms import LowRankEmbedding
from gearshift.runtime.model import Transformer


@dataclass
class Importance:
    """Per layer: one score per head and one per FFN neuron (higher = more important)."""

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]
    batches: int = 0


def blocks_of(model: nn.Module) -> Transformer:
    """The Transformer inside ``model`` (a MultiExitModel's base, or the model itself)."""
    base = getattr(model, "base", model)
    if not isinstance(base, Transformer):
        raise ConfigError(f"cannot prune a {type(model).__name__}: it holds no Transformer")
    if base.config.is_shared:
        raise ConfigError("structured pruning needs unshared layers (one block per layer)")
    return base


def dense_blocks(model: Transformer, what: str) -> None:
    """Raise ConfigError when a block Linear of ``model`` is not a plain float Linear
    (low rank, decoded, int8): ``what`` needs the weights themselves."""
    edited = [p for p in model.config.forms if p.startswith("blocks.")]
    if edited:
        form = model.config.forms[edited[0]]["form"]
        raise ConfigError(
            f"{what} needs dense float block weights, but {edited[0]} is {form} "
            f"({len(edited)} edited block modules): slim first, then factorize or quantize"
        )


def taylor_importance(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
) -> Importance:
    """Accumulate |first-order Taylor| scores of every head and neuron over ``batches``.

    ``loss_fn(model, batch) -> loss``. The model's gradients are cleared before and after;
    its parameters are not changed, and dropout is off (eval mode) while scoring.
    """
    base = blocks_of(model)
    dense_blocks(base, "Taylor importance")
    was_training = model.training
    model.eval()
    heads = [torch.zeros(b.attn.num_heads) for b in base.blocks]
    neurons = [torch.zeros(b.ffn.inp.out_features) for b in base.blocks]
    n = 0
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            loss.backward()
            with torch.no_grad():
                for i, block in enumerate(base.blocks):
                    o = block.attn.o.weight
                    if block.attn.num_heads and o.grad is not None:
                        per = (o * o.grad).view(o.shape[0], block.attn.num_heads, -1)
                        heads[i] += per.sum((0, 2)).abs().cpu()
                    w = block.ffn.out.weight
                    if w.shape[1] and w.grad is not None:
                        neurons[i] += (w * w.grad).sum(0).abs().cpu()
            n += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if n == 0:
        raise ConfigError("taylor_importance got no calibration batches")
    return Importance(heads, neurons, n)


@dataclass
class Widths:
    """Target widths: heads and FFN neurons per layer (one int for all layers, or a list),
    and the word embedding's rank (None: keep it full)."""

    heads: int | list[int]
    ffn: int | list[int]
    word_rank: int | None = None

    def per_layer(self, num_layers: int) -> tuple[list[int], list[int]]:
        def expand(v, what):
            if isinstance(v, int):
                return [v] * num_layers
            if len(v) != num_layers:
                raise ConfigError(f"{what}: {len(v)} values for {num_layers} layers")
            return list(v)

        return expand(self.heads, "heads"), expand(self.ffn, "ffn")

    def describe(self) -> str:
        h = self.heads if isinstance(self.heads, int) else "/".join(map(str, self.heads))
        f = self.ffn if isinstance(self.ffn, int) else "/".join(map(str, self.ffn))
        return f"heads {h}, ffn {f}" + (f", emb rank {self.word_rank}" if self.word_rank else "")


def current_widths(config: ModelConfig) -> Widths:
    shapes = [config.layer_shape(i) for i in range(config.num_layers)]
    return Widths(
        [s.num_heads for s in shapes], [s.intermediate_size for s in shapes], config.word_rank
    )


def select(
    scores: Sequence[torch.Tensor], counts: Sequence[int], global_ranking: bool = False
) -> list[list[int]]:
    """Indices to keep per layer: the top ``counts[l]`` of each layer's scores, or (global)
    the top ``sum(counts)`` across layers of the scores normalised per layer (L2), so
    layers may end up with different widths."""
    for s, c in zip(scores, counts):
        if not 0 <= c <= len(s):
            raise ConfigError(f"cannot keep {c} of {len(s)} units in a layer")
    if not global_ranking:
        return [
            sorted(torch.topk(s, c).indices.tolist()) if c else [] for s, c in zip(scores, counts)
        ]
    normed = [s / s.norm().clamp_min(1e-12) for s in scores]
    flat = torch.cat(normed)
    owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(normed)])
    local = torch.cat([torch.arange(len(s)) for s in normed])
    top = torch.topk(flat, sum(counts)).indices
    keep: list[list[int]] = [[] for _ in scores]
    for t in top.tolist():
        keep[int(owner[t])].append(int(local[t]))
    return [sorted(k) for k in keep]


def _slice_linear(
    lin: nn.Linear, rows: list[int] | None = None, cols: list[int] | None = None
) -> nn.Linear:
    w = lin.weight.detach()
    b = lin.bias.detach() if lin.bias is not None else None
    if rows is not None:
        w = w[rows]
        b = b[rows] if b is not None else None
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def prune(
    model: Transformer, keep_heads: list[list[int]], keep_neurons: list[list[int]]
) -> Transformer:
    """A copy of ``model`` with only the given heads and neurons of each layer."""
    base = blocks_of(model)
    dense_blocks(base, "pruning")
    cfg = base.config
    L, dh = cfg.num_layers, cfg.head_dim
    if len(keep_heads) != L or len(keep_neurons) != L:
        raise ConfigError(f"give the heads and neurons to keep for each of the {L} layers")
    new_cfg = ModelConfig.from_dict(copy.deepcopy(cfg.to_dict()))
    new_cfg.blocks = [BlockShape(len(h), len(n)) for h, n in zip(keep_heads, keep_neurons)]
    new = copy.deepcopy(base)
    new.config = new_cfg
    for i, (block, heads, neurons) in enumerate(zip(new.blocks, keep_heads, keep_neurons)):
        old = base.blocks[cfg.layer_to_block[i]]
        if not all(0 <= h < old.attn.num_heads for h in heads) or len(set(heads)) != len(heads):
            raise ConfigError(f"layer {i}: head indices {heads} out of range or repeated")
        cols = [h * dh + j for h in heads for j in range(dh)]
        block.attn.q = _slice_linear(old.attn.q, rows=cols)
        block.attn.k = _slice_linear(old.attn.k, rows=cols)
        block.attn.v = _slice_linear(old.attn.v, rows=cols)
        block.attn.o = _slice_linear(old.attn.o, cols=cols)
        block.attn.num_heads = len(heads)
        block.ffn.inp = _slice_linear(old.ffn.inp, rows=neurons)
        block.ffn.out = _slice_linear(old.ffn.out, cols=neurons)
    new.train(model.training)
    return new


def factorize_word_embedding(model: Transformer, rank: int) -> Transformer:
    """A copy whose word embedding is its best rank-``rank`` approximation (truncated SVD),
    stored as ``(V x r)`` codes and an ``r -> E`` projection (a low-rank embedding is cut
    to the lower rank from its product)."""
    base = blocks_of(model)
    word = base.embeddings.word
    if not isinstance(word, nn.Embedding | LowRankEmbedding):
        raise ConfigError(
            f"the word embedding is {type(word).__name__} (decoded by factorize); a low-rank "
            "embedding replaces it from a dense table: densify it first"
        )
    with torch.no_grad():
        w = word.weight.detach().float()  # a low-rank table's product C P^T
    V, E = w.shape
    if not 1 <= rank < min(V, E):
        raise ConfigError(f"word embedding rank {rank} must be between 1 and {min(V, E) - 1}")
    u, s, vt = torch.linalg.svd(w, full_matrices=False)
    codes = u[:, :rank] * s[:rank]
    new = copy.deepcopy(base)
    new.embeddings.word = LowRankEmbedding(V, E, rank, padding_idx=word.padding_idx)
    with torch.no_grad():
        new.embeddings.word.codes.weight.copy_(codes)
        new.embeddings.word.projection.weight.copy_(vt[:rank].t())
    record_forms(new)  # word_rank = rank
    return new


def model_cost(
    config: ModelConfig, widths: Widths, metric: str = "flops", seq_len: int = 128
) -> float:
    """FLOPs at ``seq_len`` or parameters of ``config`` cut to ``widths`` (no exits)."""
    cfg = ModelConfig.from_dict(copy.deepcopy(config.to_dict()))
    heads, ffn = widths.per_layer(cfg.num_layers)
    cfg.blocks = [BlockShape(h, f) for h, f in zip(heads, ffn)]
    cfg.layer_to_block = list(range(cfg.num_layers))
    cfg.word_rank = widths.word_rank
    if metric == "flops":
        return float(analytic_flops(cfg, seq_len))
    if metric == "params":
        with torch.device("meta"):  # shapes only: nothing is allocated
            return float(sum(p.numel() for p in Transformer(cfg).parameters()))
    raise ConfigError(f"metric {metric!r}: use flops or params")


def widths_for_ratio(
    config: ModelConfig,
    ratio: float,
    metric: str = "flops",
    word_rank: int | None = None,
    seq_len: int = 128,
) -> Widths:
    """Uniform widths (the same fraction of heads and neurons in every layer) whose cost is
    closest to ``ratio`` of the full model's (``ratio`` < 1: e.g. 1/8), with the word
    embedding at ``word_rank``."""
    if not 0 < ratio <= 1:
        raise ConfigError(f"target ratio {ratio} must be in (0, 1]: the share of the cost kept")
    full = model_cost(config, current_widths(config), metric, seq_len)
    H = max(config.layer_shape(i).num_heads for i in range(config.num_layers))
    F = max(config.layer_shape(i).intermediate_size for i in range(config.num_layers))
    best, best_gap = None, math.inf
    for h in range(H + 1):
        lo, hi = 0, F
        while lo < hi:  # the largest FFN width with cost <= target, for this head count
            mid = (lo + hi + 1) // 2
            if model_cost(config, Widths(h, mid, word_rank), metric, seq_len) <= ratio * full:
                lo = mid
            else:
                hi = mid - 1
        for f in (lo, min(lo + 1, F)):
            gap = abs(model_cost(config, Widths(h, f, word_rank), metric, seq_len) / full - ratio)
            if gap < best_gap:
                best, best_gap = Widths(h, f, word_rank), gap
    return best


def schedule(start: Widths, target: Widths, num_layers: int, iterations: int) -> list[Widths]:
    """Widths after each of ``iterations`` pruning steps, moving linearly from ``start``
    to ``target`` (the last step is the target)."""
    if iterations < 1:
        raise ConfigError("the pruning schedule needs at least one iteration")
    h0, f0 = start.per_layer(num_layers)
    h1, f1 = target.per_layer(num_layers)
    if any(b > a for a, b in zip(h0 + f0, h1 + f1)):
        raise ConfigError(
            f"target widths {target.describe()} exceed the model's {start.describe()}"
        )
    steps = []
    for i in range(1, iterations + 1):
        t = i / iterations
        heads = [round(a + (b - a) * t) for a, b in zip(h0, h1)]
        ffn = [round(a + (b - a) * t) for a, b in zip(f0, f1)]
        steps.append(Widths(heads, ffn, target.word_rank))  # SVD: the rank is cut at once
    return steps


@dataclass
class PruneRecord:
    """What one pruning step kept (saved with the model)."""

    widths: dict[str, Any] = field(default_factory=dict)
    kept_heads: list[list[int]] = field(default_factory=list)
    kept_neurons: list[list[int]] = field(default_factory=list)
