"""FLOPs: counted by running the model, and the closed form for the unmodified model.

Convention (PyTorch's ``FlopCounterMode``): a multiply-add is 2 FLOPs, and only matrix
multiplies are counted (Linear layers, attention scores ``q @ k^T`` and weighted values
``probs @ v``, the heads). Element-wise work (softmax, LayerNorm, GELU, bias adds) is left out,
as in the papers this project compares with.

Counting runs the model for real, because methods change what runs (merged tokens, rows that
exit early, low-rank Linears). FlopCounterMode does not see PyTorch's fused CPU attention
kernel, so counting switches the runtime to explicit attention matmuls through
:data:`gearshift.runtime.modules.EXPLICIT_ATTENTION`; :func:`analytic_flops` is the check.
"""

from __future__ import annotations

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
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(**inputs)
    finally:
        EXPLICIT_ATTENTION.reset(token)
        model.train(was_training)
        for p in frozen:
            p.requires_grad_(True)
    return int(counter.get_total_flops())


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
    """Return the closed-form FLOPs of the unmodified model on ``batch`` rows of ``seq_len``.

    Counts, per layer (each layer with its own block's width; a shared block counts once per
    layer that runs it): the Q, K, V, O projections, attention scores and weighted values,
    and the two FFN matmuls; plus ALBERT's E -> d embedding projection, a factorized word
    embedding's r -> E projection, and the head
    (pooler-like dense + output for sequence heads, output per token for token heads, the
    vocabulary projection for ``lm``). A block with 0 heads or 0 FFN neurons runs no matmul.
    """
    n, d, dh = seq_len, config.hidden_size, config.head_dim
    per_example = 0
    e = config.embedding_size or d
    if config.word_rank:
        per_example += 2 * n * config.word_rank * e  # the factorized word embedding's r -> E
    if config.embedding_size:
        per_example += 2 * n * config.embedding_size * d
    for layer in range(config.num_layers):
        shape = config.layer_shape(layer)
        inner = shape.num_heads * dh
        if shape.num_heads:
            per_example += 4 * 2 * n * d * inner  # Q, K, V and O projections
        if shape.intermediate_size:
            per_example += 2 * 2 * n * d * shape.intermediate_size  # FFN in and out
    per_example += attention_flops(config, seq_len)
    per_example += _head_flops(config, seq_len)
    return batch * per_example


def _head_flops(config: ModelConfig, seq_len: int) -> int:
    """FLOPs of the task or LM head for one example of length ``seq_len``."""
    head, d = config.head, config.hidden_size
    if head.kind in ("classification", "regression"):
        out = 1 if head.kind == "regression" else head.num_labels
        dense = 2 * d * d if head.dense_activation else 0
        return dense + 2 * d * out
    if head.kind == "token_classification":
        return 2 * seq_len * d * head.num_labels
    if head.kind == "lm":
        if config.word_rank and not config.tie_word_embeddings:
            return 2 * seq_len * d * config.vocab_size
        if config.word_rank:  # tied and factorized: h P, then the (V x r) codes
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
