"""Parameters: how many, how many bytes, and where they sit.

Every distinct tensor is counted once: a block shared by several layers (ALBERT, the shared
models of methods/steps) and tied weights (an LM head reusing the word embedding) count once,
also when two Parameter objects view the same storage.

int8 Linears (:class:`gearshift.runtime.quant.Int8Linear`) hold their weights in torch's
packed form, not as Parameters: their weights and biases count as (frozen) parameters, and
their bytes are the int8 values, float bias and the scales and zero points.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from gearshift.runtime.quant import Int8Linear

# Top-level submodule names of gearshift's Transformer, grouped for the breakdown.
EMBEDDING_PREFIXES = ("embeddings",)
BLOCK_PREFIXES = ("blocks", "final_norm")
HEAD_PREFIXES = ("head", "lm_head")


def _storage_key(t: torch.Tensor) -> tuple:
    """Identify the memory a tensor occupies (two views of one storage get the same key)."""
    if t.device.type == "meta" or t.numel() == 0:
        return ("id", id(t))
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())


def distinct_named_parameters(
    model: nn.Module, trainable_only: bool = False
) -> Iterator[tuple[str, nn.Parameter]]:
    """Yield ``(name, parameter)`` once per distinct tensor (first name wins)."""
    seen: set[tuple] = set()
    for name, p in model.named_parameters(remove_duplicate=True):
        if trainable_only and not p.requires_grad:
            continue
        key = _storage_key(p)
        if key in seen:
            continue
        seen.add(key)
        yield name, p


def int8_modules(model: nn.Module) -> Iterator[tuple[str, Int8Linear]]:
    """Yield ``(name, module)`` once per distinct int8 Linear (a shared one under its first name)."""
    for name, m in model.named_modules():
        if isinstance(m, Int8Linear):
            yield name, m


def _int8_weights(m: Int8Linear) -> int:
    return m.in_features * m.out_features + (m.out_features if m.has_bias else 0)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Return the number of parameters, each distinct tensor counted once.

    ``trainable_only=True`` counts only parameters with ``requires_grad`` (int8 weights are
    frozen: not counted then).
    """
    total = sum(p.numel() for _, p in distinct_named_parameters(model, trainable_only))
    if not trainable_only:
        total += sum(_int8_weights(m) for _, m in int8_modules(model))
    return total


def parameter_bytes(model: nn.Module, include_buffers: bool = False) -> int:
    """Return the bytes the distinct parameters occupy (their own dtypes; int8 weights with
    their scales and zero points).

    ``include_buffers=True`` adds the distinct buffers (methods may keep weights as buffers,
    e.g. quantized or decoded matrices): the full memory the model's weights need.
    """
    total = sum(p.numel() * p.element_size() for _, p in distinct_named_parameters(model))
    for _, m in int8_modules(model):
        total += sum(t.numel() * t.element_size() for t in m.int8_state().values())
    if include_buffers:
        seen = {_storage_key(p) for _, p in distinct_named_parameters(model)}
        for b in model.buffers():
            key = _storage_key(b)
            if key not in seen:
                seen.add(key)
                total += b.numel() * b.element_size()
    return total


def _group_of(name: str) -> str:
    if name.startswith("base."):  # a stack's (or a wrapper's) base model
        name = name[len("base.") :]
    top = name.split(".", 1)[0]
    if top in EMBEDDING_PREFIXES:
        return "embeddings"
    if top in BLOCK_PREFIXES:
        return "blocks"
    if top in HEAD_PREFIXES:
        return "heads"
    return "other"


def parameter_breakdown(model: nn.Module) -> dict[str, int | list[int]]:
    """Return parameter counts by part of the model.

    Keys: ``embeddings``, ``blocks`` (transformer blocks and a final LayerNorm), ``heads``
    (task and LM heads), ``other`` (anything a method attached elsewhere, e.g. exit heads),
    ``total`` (their sum, equal to :func:`count_parameters`) and ``per_block`` (one count per
    distinct parameter block, when the model has ``blocks``).
    """
    out: dict[str, int | list[int]] = {"embeddings": 0, "blocks": 0, "heads": 0, "other": 0}
    for name, p in distinct_named_parameters(model):
        out[_group_of(name)] += p.numel()  # type: ignore[operator]
    for name, m in int8_modules(model):
        out[_group_of(name)] += _int8_weights(m)  # type: ignore[operator]
    out["total"] = sum(out[k] for k in ("embeddings", "blocks", "heads", "other"))  # type: ignore[misc]
    blocks = getattr(getattr(model, "base", model), "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        out["per_block"] = [count_parameters(b) for b in blocks]
    return out
