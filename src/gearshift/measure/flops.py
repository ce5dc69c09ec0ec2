"""FLOPs: counted by running the model, and the closed form for the unmodified model.

Convention (PyTorch's ``FlopCounterMode``): a multiply-add is 2 FLOPs, and only matrix
multiplies are counted (Linear layers, attention scores ``q @ k^T`` and weighted values
``probs @ v``, the heads). Element-wise work (softmax, LayerNorm, GELU, bias adds) is left out,
as in the papers this project compares with.

Counting runs the model for real, because methods change what runs (merged tokens, rows that
exit early, low-rank Linears). FlopCounterMode does not see PyTorch's fused CPU attention
kernel, so counting switches the runtime to explicit attention matmuls through
:data:`gearshift.runtime.modules.EXPLICIT_ATTENTION`; :func:`analytic_flops` is the check.

int8 Linears (torch's ``quantized::linear_dynamic``) have no formula in FlopCounterMode;
counting gives them one: the same multiply-adds as the float Linear, 2 per multiply-add. An
int8 multiply-add is cheaper than a float one on most CPUs, but it is the same work in this
convention, which counts arithmetic, not its cost; latency says what int8 saves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gearshift.runtime.config import ModelConfig
from gearshift.runtime.modules import EXPLICIT_ATTENTION
from gearshift.runtime.plan import ForwardPlan

# The keyword arguments of Transformer.forward that a batch may carry; everything else in a
# batch dict (labels, example ids, ...) is left out of the forward pass.
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def model_inputs(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Return the model's keyword arguments from a batch dict (lists become tensors)."""
    out = {}
    for key in MODEL_INPUT_KEYS:
        if key in batch and batch[key] is not None:
            value = batch[key]
            out[key] = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if "input_ids" not in out:
        raise KeyError(f"a batch needs 'input_ids'; got keys {sorted(batch)}")
    return out


def batch_size_of(batch: Mapping[str, Any]) -> int:
    """Return the number of examples (rows) in a batch dict.

    Read from ``input_ids``, or else from the first tensor or list in the batch.
    """
    values = [batch["input_ids"]] if "input_ids" in batch else list(batch.values())
    for value in values:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
        if isinstance(value, list | tuple):
            return len(value)
    raise ValueError(f"cannot tell the batch size of a batch with keys {sorted(batch)}")


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def count_flops(
    model: nn.Module,
    batch: Mapping[str, Any],
    plan: ForwardPlan | None = None,
    *,
    explicit_attention: bool = True,
) -> int:
    """Run ``model`` once on ``batch`` and return the FLOPs it performed (whole batch).

    ``explicit_attention=False`` leaves the fused attention kernel in place; the count then
    misses the attention scores and weighted values on CPU (it exists to show that).

    The model runs in eval mode without gradients, with attention as explicit matmuls so the
    counter sees them; the model's train/eval mode, its parameters' ``requires_grad`` and the
    attention switch are restored afterwards.
    """
    inputs = {k: v.to(_device_of(model)) for k, v in model_inputs(batch).items()}
    if plan is not None:
        inputs["plan"] = plan
    was_training = model.training
    # Parameters are frozen while counting: FlopCounterMode's module tracker trips over
    # outputs that are plain views of a parameter (a block with every head pruned returns
    # the output bias expanded), which still "require grad" under no_grad.
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    model.eval()
    token = EXPLICIT_ATTENTION.set(explicit_attention)
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_custom_formulas())
        with torch.no_grad(), counter:
            model(**inputs)
    finally:
        EXPLICIT_ATTENTION.reset(token)
        model.train(was_training)
        for p in frozen:
            p.requires_grad_(True)
    return int(counter.get_total_flops())


def _int8_linear_flops(x_shape, packed_weight, *args, out_shape=None, **kwargs) -> int:
    """quantized::linear_dynamic: ``x`` (..., m) times an int8 (n x m) weight, 2 per
    multiply-add like a float Linear (the packed weight has no shape; the output has n)."""
    return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * out_shape[-1]


def _custom_formulas() -> dict:
    """FLOP formulas FlopCounterMode lacks: torch's dynamic int8 Linear."""
    return {torch.ops.quantized.linear_dynamic: _int8_linear_flops}


def attention_flops(config: ModelConfig, seq_len: int, batch: int = 1) -> int:
    """Return the FLOPs of the attention scores and weighted values alone (all layers).

    Per layer: ``q @ k^T`` and ``probs @ v`` are each ``2 * n * n * heads * head_dim`` per
    example. This is the part a fused attention kernel hides from FlopCounterMode.
    """
    n, dh = seq_len, config.head_dim
    total = 0
    for layer in range(config.num_layers):
        heads = config.layer_shape(layer).num_heads
        total += 2 * 2 * n * n * heads * dh
    return batch * total


def analytic_flops(config: ModelConfig, seq_len: int, batch: int = 1) -> int:
    """Return the closed-form FLOPs of the model ``config`` describes on ``batch`` rows of
    ``seq_len``, model edits included.

    Counts, per layer (each layer with its own block's width; a shared block counts once per
    layer that runs it): the Q, K, V, O projections, attention scores and weighted values,
    and the two FFN matmuls; plus ALBERT's E -> d embedding projection, a low-rank word
    embedding's r -> E projection, and the head (pooler-like dense + output for sequence
    heads, output per token for token heads, the vocabulary projection for ``lm``). A block
    with 0 heads or 0 FFN neurons runs no matmul.

    Each Linear counts by its form (``config.forms``): dense ``2 m n`` per token; low-rank
    ``2 r (m + n)`` (two matmuls through rank r); int8 the same ``2 m n`` as dense (the same
    multiply-adds, see the module docstring); decoded ``2 m n`` too, since its weight is
    rebuilt once, at load time, and cached: the rebuild costs nothing per example (it is the
    compression report's ``decode_flops``, paid once).
    """
    n, d, dh = seq_len, config.hidden_size, config.head_dim
    per_example = 0
    e = config.embedding_size or d
    if config.word_rank:
        per_example += _linear_flops(config, "embeddings.word.projection", config.word_rank, e, n)
    if config.embedding_size:
        per_example += _linear_flops(config, "embeddings.project", config.embedding_size, d, n)
    for layer in range(config.num_layers):
        block = config.layer_to_block[layer]
        shape = config.blocks[block]
        inner, ffn = shape.num_heads * dh, shape.intermediate_size
        if shape.num_heads:  # Q, K, V and O projections
            for name, m, out in (
                ("q", d, inner),
                ("k", d, inner),
                ("v", d, inner),
                ("o", inner, d),
            ):
                per_example += _linear_flops(config, f"blocks.{block}.attn.{name}", m, out, n)
        if ffn:  # FFN in and out
            per_example += _linear_flops(config, f"blocks.{block}.ffn.inp", d, ffn, n)
            per_example += _linear_flops(config, f"blocks.{block}.ffn.out", ffn, d, n)
    per_example += attention_flops(config, seq_len)
    per_example += _head_flops(config, seq_len)
    return batch * per_example


def _linear_flops(config: ModelConfig, path: str, m: int, n: int, tokens: int) -> int:
    """FLOPs of the Linear at ``path`` (m -> n) on ``tokens`` tokens, by its form."""
    form = config.forms.get(path, {})
    if form.get("form") == "low-rank":
        return 2 * tokens * form["rank"] * (m + n)
    return 2 * tokens * m * n  # dense, int8 (same multiply-adds), decoded (weight cached)


def _head_flops(config: ModelConfig, seq_len: int) -> int:
    """FLOPs of the task or LM head for one example of length ``seq_len``."""
    head, d = config.head, config.hidden_size
    if head.kind in ("classification", "regression"):
        out = 1 if head.kind == "regression" else head.num_labels
        dense = _linear_flops(config, "head.dense", d, d, 1) if head.dense_activation else 0
        return dense + _linear_flops(config, "head.out", d, out, 1)
    if head.kind == "token_classification":
        return _linear_flops(config, "head.out", d, head.num_labels, seq_len)
    if head.kind == "lm":
        if not config.tie_word_embeddings:
            return _linear_flops(config, "lm_head", d, config.vocab_size, seq_len)
        if config.word_rank:  # tied and low rank: h P, then the (V x r) codes
            return 2 * seq_len * (d * config.word_rank + config.word_rank * config.vocab_size)
        return 2 * seq_len * d * config.vocab_size
    return 0


def _shape_key(inputs: Mapping[str, torch.Tensor]) -> tuple:
    return tuple((k, tuple(v.shape)) for k, v in sorted(inputs.items()))


def flops_per_example(
    model: nn.Module, batches: Iterable[Mapping[str, Any]], plan: ForwardPlan | None = None
) -> float:
    """Return the mean counted FLOPs per example over ``batches`` (total FLOPs / examples).

    The batches decide what is measured: batch size 1 runs each example at its own length;
    larger batches with dynamic padding include the real padding. Without a plan the count
    depends only on the input shapes, so batches of an already seen shape reuse the count;
    with a plan (early exit, token merging) every batch runs.
    """
    cache: dict[tuple, int] = {}
    total = 0
    examples = 0
    for batch in batches:
        inputs = model_inputs(batch)
        if plan is None:
            key = _shape_key(inputs)
            if key not in cache:
                cache[key] = count_flops(model, inputs)
            total += cache[key]
        else:
            total += count_flops(model, inputs, plan)
        examples += batch_size_of(inputs)
    if examples == 0:
        raise ValueError("flops_per_example got no batches (or only empty ones)")
    return total / examples


def fixed_length_batch(
    config: ModelConfig, seq_len: int, batch: int = 1
) -> dict[str, torch.Tensor]:
    """Return a batch of ``batch`` rows of ``seq_len`` real (non-padding) tokens.

    The token ids are a fixed pseudo-random draw that avoids the padding id, so a method that
    looks at the content sees something text-like rather than one repeated token.
    """
    if seq_len + config.position_offset > config.max_positions:
        raise ValueError(
            f"seq_len {seq_len} does not fit the model's {config.max_positions} positions"
            + (f" (offset {config.position_offset})" if config.position_offset else "")
        )
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch, seq_len), generator=g)
    if config.pad_token_id is not None and config.vocab_size > 1:
        pad = config.pad_token_id
        ids = torch.where(ids == pad, (ids + 1) % config.vocab_size, ids)
    out = {"input_ids": ids, "attention_mask": torch.ones(batch, seq_len, dtype=torch.long)}
    if config.type_vocab_size:
        out["token_type_ids"] = torch.zeros(batch, seq_len, dtype=torch.long)
    return out


def flops_at_length(model: nn.Module, seq_len: int = 128, plan: ForwardPlan | None = None) -> int:
    """Return the counted FLOPs for one example of ``seq_len`` real tokens (batch of 1)."""
    return count_flops(model, fixed_length_batch(model.config, seq_len), plan)
