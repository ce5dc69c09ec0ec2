"""How a model family's Hugging Face checkpoint maps onto the runtime.

A family is described by data: a :class:`Backbone` with a function that reads the HF config
into :class:`~gearshift.runtime.config.ModelConfig` fields, and a table of weight names.
Table entries are ``(hf_name, runtime_name, transform)``; ``{i}`` stands for a layer (or
block) index. Transforms: ``None`` (copy), ``"T"`` (transpose: GPT-2's Conv1D), ``"qkv"``
(transpose, then split a fused query/key/value matrix into three).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from gearshift.errors import ArtifactError

Table = list[tuple[str, str, str | None]]


@dataclass
class Backbone:
    """One model family: config reader, weight-name table and head defaults."""

    family: str
    model_types: tuple[str, ...]  # HF config.model_type values this family reads
    base_prefix: str  # prefix of the base model inside task checkpoints ("bert.")
    read_config: Callable[[Any], dict[str, Any]]  # HF config -> ModelConfig kwargs (no head)
    table: Table  # base-model weights
    head_table: dict[str, Table] = field(default_factory=dict)  # head kind -> weights
    head_defaults: dict[str, Any] = field(default_factory=dict)  # HeadConfig kwargs
    read_head_dropout: Callable[[Any], float] | None = None

    def _compiled(self, table: Table):
        out = []
        for hf, rt, tf in table:
            pattern = re.compile("^" + re.escape(hf).replace(r"\{i\}", r"(\d+)") + "$")
            out.append((pattern, rt, tf))
        return out

    def convert(
        self, hf_state: dict[str, torch.Tensor], head_kind: str | None
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Rename HF weights to runtime names; returns (runtime state dict, unused HF names)."""
        tables = self._compiled(self.table)
        if head_kind in self.head_table:
            tables += self._compiled(self.head_table[head_kind])
        out: dict[str, torch.Tensor] = {}
        unused = []
        for name, tensor in hf_state.items():
            key = name[len(self.base_prefix) :] if name.startswith(self.base_prefix) else name
            for pattern, rt, tf in tables:
                m = pattern.match(key)
                if m is None:
                    continue
                target = rt.replace("{i}", m.group(1)) if m.groups() else rt
                if tf is None:
                    out[target] = tensor
                elif tf == "T":
                    out[target] = tensor.t().contiguous()
                elif tf == "qkv":
                    t = tensor.t() if tensor.dim() == 2 else tensor
                    for part, chunk in zip("qkv", t.chunk(3, dim=0)):
                        out[target.replace("{qkv}", part)] = chunk.contiguous()
                else:  # pragma: no cover - a table error
                    raise ValueError(f"unknown transform {tf!r} in backbone {self.family}")
                break
            else:
                unused.append(name)
        return out, unused


def entries(
    hf_prefix: str, rt_prefix: str, names: list[tuple[str, str]], params=("weight", "bias")
) -> Table:
    """Table rows for modules with the same parameters: ``{hf_prefix}{hf}.{p}`` ->
    ``{rt_prefix}{rt}.{p}`` for each (hf, rt) in ``names`` and each ``p`` in ``params``."""
    return [
        (f"{hf_prefix}{hf}.{p}", f"{rt_prefix}{rt}.{p}", None) for hf, rt in names for p in params
    ]


_REGISTRY: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    """Add a family; each file in backbones/ calls this once."""
    _REGISTRY[backbone.family] = backbone
    return backbone


def for_model_type(model_type: str) -> Backbone:
    """The backbone for an HF ``config.model_type``; ArtifactError naming the known ones."""
    for bb in _REGISTRY.values():
        if model_type in bb.model_types:
            return bb
    known = sorted(t for bb in _REGISTRY.values() for t in bb.model_types)
    raise ArtifactError(
        f"model type {model_type!r} is not supported; gearshift reads {', '.join(known)}. "
        "Add a family with one file in gearshift/backbones/."
    )


def families() -> list[str]:
    return sorted(_REGISTRY)
