"""The runtime's building blocks, written to read like the equations.

Shapes: B batch, n sequence length, d hidden size, h heads, dh head size, f FFN width.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gearshift.runtime.config import BlockShape, ModelConfig
from gearshift.runtime.forms import LowRankEmbedding

# Measurement switch: FLOP counting needs attention as explicit matmuls (PyTorch's
# FlopCounterMode does not see the fused CPU attention kernel). Set via
# ``gearshift.measure.flops``; a ContextVar so it is per thread.
EXPLICIT_ATTENTION: ContextVar[bool] = ContextVar("gearshift_explicit_attention", default=False)


def activation_fn(name: str):
    """Return the activation function called ``name`` (HF's names)."""
    if name == "gelu":
        return F.gelu
    if name == "gelu_new":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    if name == "tanh":
        return torch.tanh
    raise ValueError(f"unknown activation {name!r}")


@dataclass
class AttentionMask:
    """Which keys each query may see: padding (``keep``, True = real token) and causality.

    Builds the additive bias for scaled_dot_product_attention once per shape and caches it.
    """

    keep: torch.Tensor | None  # (B, n_keys) bool; None = every token is real
    causal: bool = False
    past: int = 0  # key/value positions already cached (decoding)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_attention_mask(
        cls, attention_mask: torch.Tensor | None, causal: bool, past: int = 0
    ) -> AttentionMask:
        keep = None
        if attention_mask is not None:
            keep = attention_mask.bool()
            if bool(keep.all()):
                keep = None  # no padding: let SDPA take its fast path
        return cls(keep=keep, causal=causal, past=past)

    def bias(self, q_len: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """Additive (B or 1, 1, q_len, k_len) bias, or None when nothing is masked."""
        key = (q_len, dtype, device)
        if key in self._cache:
            return self._cache[key]
        k_len = q_len + self.past
        allowed = None
        if self.keep is not None:
            allowed = self.keep[:, None, None, :k_len]
        if self.causal and q_len > 1:
            tri = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(self.past)
            allowed = tri[None, None] if allowed is None else allowed & tri[None, None]
        bias = None
        if allowed is not None:
            bias = torch.zeros(allowed.shape, dtype=dtype, device=device)
            bias.masked_fill_(~allowed, torch.finfo(dtype).min)
        self._cache[key] = bias
        return bias

    def select(self, rows: torch.Tensor) -> AttentionMask:
        """The mask of a subset of the batch's rows (rows that have not exited)."""
        keep = None if self.keep is None else self.keep.index_select(0, rows)
        return AttentionMask(keep=keep, causal=self.causal, past=self.past)


class Embeddings(nn.Module):
    """Token + position (+ token type) embeddings, optional LayerNorm, optional E -> d projection.

    With ``config.word_rank`` the word embedding is low rank (slim's embedding rank, or
    factorize's SVD of it): a :class:`~gearshift.runtime.forms.LowRankEmbedding`, ``(V x r)``
    codes then an ``r -> E`` projection."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        e = config.embedding_size or config.hidden_size
        r = config.word_rank
        self.word = (
            LowRankEmbedding(config.vocab_size, e, r, padding_idx=config.pad_token_id)
            if r
            else nn.Embedding(config.vocab_size, e, padding_idx=config.pad_token_id)
        )
        self.position = nn.Embedding(config.max_positions, e)
        self.token_type = (
            nn.Embedding(config.type_vocab_size, e) if config.type_vocab_size else None
        )
        self.norm = nn.LayerNorm(e, eps=config.layer_norm_eps) if config.embedding_norm else None
        self.dropout = nn.Dropout(config.hidden_dropout)
        # ALBERT's factorized embeddings: E -> d after the sum and LayerNorm.
        self.project = nn.Linear(e, config.hidden_size) if config.embedding_size else None
        self.position_offset = config.position_offset
        self.pad_token_id = config.pad_token_id

    def position_ids(self, input_ids: torch.Tensor, past: int) -> torch.Tensor:
        n = input_ids.shape[1]
        if self.position_offset:
            # RoBERTa: padding tokens keep the padding index, real tokens count from it + 1.
            real = input_ids.ne(self.pad_token_id).int()
            return (torch.cumsum(real, dim=1) + past) * real + (self.position_offset - 1)
        return torch.arange(past, past + n, device=input_ids.device)[None]

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past: int = 0,
    ) -> torch.Tensor:
        if position_ids is None:
            position_ids = self.position_ids(input_ids, past)
        x = self.word(input_ids)
        x = x + self.position(position_ids)
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type(token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        x = self.dropout(x)
        if self.project is not None:
            x = self.project(x)
        return x


class Attention(nn.Module):
    """Multi-head self-attention with ``num_heads`` heads of size ``head_dim`` (may be pruned)."""

    def __init__(self, config: ModelConfig, shape: BlockShape) -> None:
        super().__init__()
        d, inner = config.hidden_size, shape.num_heads * config.head_dim
        self.num_heads, self.head_dim = shape.num_heads, config.head_dim
        self.q = nn.Linear(d, inner, bias=config.qkv_bias)
        self.k = nn.Linear(d, inner, bias=config.qkv_bias)
        self.v = nn.Linear(d, inner, bias=config.qkv_bias)
        self.o = nn.Linear(inner, d)
        self.dropout_p = config.attention_dropout

    def forward(
        self,
        x: torch.Tensor,
        mask: AttentionMask,
        kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        B, n, _ = x.shape
        if self.num_heads == 0:  # every head pruned: only the output bias is left
            return self.o.bias.expand(B, n, -1), kv_cache
        h, dh = self.num_heads, self.head_dim
        q = self.q(x).view(B, n, h, dh).transpose(1, 2)  # (B, h, n, dh)
        k = self.k(x).view(B, n, h, dh).transpose(1, 2)
        v = self.v(x).view(B, n, h, dh).transpose(1, 2)
        if kv_cache is not None:
            k = torch.cat([kv_cache[0], k], dim=2)
            v = torch.cat([kv_cache[1], v], dim=2)
        bias = mask.bias(n, q.dtype, q.device)
        p = self.dropout_p if self.training else 0.0
        if EXPLICIT_ATTENTION.get():
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(dh)  # (B, h, n, n_k)
            if bias is not None:
                scores = scores + bias
            probs = F.dropout(scores.softmax(dim=-1), p=p, training=self.training)
            ctx = probs @ v
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        ctx = ctx.transpose(1, 2).reshape(B, n, h * dh)
        return self.o(ctx), (k, v)


class FeedForward(nn.Module):
    """Position-wise FFN: ``out(act(inp(x)))`` with ``intermediate_size`` neurons (may be pruned)."""

    def __init__(self, config: ModelConfig, shape: BlockShape) -> None:
        super().__init__()
        self.inp = nn.Linear(config.hidden_size, shape.intermediate_size)
        self.out = nn.Linear(shape.intermediate_size, config.hidden_size)
        self.act = activation_fn(config.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inp.out_features == 0:
            return self.out.bias.expand_as(x)
        return self.out(self.act(self.inp(x)))


class LayerNorms(nn.Module):
    """A layer's two LayerNorms (``attn_norm``, ``ffn_norm``): held by its block, or by the
    model per layer when shared blocks keep per-layer norms (``ModelConfig.layer_norms``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class Block(nn.Module):
    """One transformer layer: attention and FFN, each with residual and LayerNorm (post or pre).

    With ``config.layer_norms`` the block holds no LayerNorms: every call passes the running
    layer's (``norms``)."""

    def __init__(self, config: ModelConfig, shape: BlockShape) -> None:
        super().__init__()
        # registration order is parameter order, which optimizer checkpoints depend on
        own_norms = not config.layer_norms
        self.attn = Attention(config, shape)
        if own_norms:
            self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config, shape)
        if own_norms:
            self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.pre_norm = config.norm_position == "pre"

    def forward(
        self,
        h: torch.Tensor,
        mask: AttentionMask,
        ffn_wrap=None,
        kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        norms: LayerNorms | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        own = self if norms is None else norms
        if self.pre_norm:  # GPT-2: h + Attn(LN(h)); h + FFN(LN(h))
            a, kv = self.attn(own.attn_norm(h), mask, kv_cache)
            h = h + self.dropout(a)
            x = own.ffn_norm(h)
            f = self.ffn(x) if ffn_wrap is None else ffn_wrap(self.ffn, x, mask.keep)
            return h + self.dropout(f), kv
        # BERT: LN(h + Attn(h)); LN(h + FFN(h))
        a, kv = self.attn(h, mask, kv_cache)
        h = own.attn_norm(h + self.dropout(a))
        f = self.ffn(h) if ffn_wrap is None else ffn_wrap(self.ffn, h, mask.keep)
        return own.ffn_norm(h + self.dropout(f)), kv


class Head(nn.Module):
    """Task head: sequence classification/regression (pooled vector) or token classification."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hc = config.head
        d = config.hidden_size
        self.kind, self.pool = hc.kind, hc.pool
        self.dense = (
            nn.Linear(d, d) if hc.dense_activation and hc.kind != "token_classification" else None
        )
        self.dense_act = activation_fn(hc.dense_activation) if self.dense is not None else None
        self.dropout = nn.Dropout(hc.dropout)
        out = 1 if hc.kind == "regression" else hc.num_labels
        self.out = nn.Linear(d, out, bias=hc.output_bias)

    def pooled(self, h: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """The vector a sequence head reads: first token, or last real token (decoders)."""
        if self.pool == "first":
            return h[:, 0]
        if keep is None:
            return h[:, -1]
        last = keep.long().sum(dim=1) - 1
        return h[torch.arange(h.shape[0], device=h.device), last]

    def forward(self, h: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "token_classification":
            return self.out(self.dropout(h))
        x = self.pooled(h, keep)
        if self.dense is not None:
            x = self.dense_act(self.dense(x))
        x = self.out(self.dropout(x))
        return x.squeeze(-1) if self.kind == "regression" else x
