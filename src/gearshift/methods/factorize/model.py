"""Where compression attaches to a model, and the compressed model as a gearshift folder.

Targets are the runtime's named Linears, ``blocks[i].attn.{q,k,v,o}`` and
``blocks[i].ffn.{inp,out}``, and the word embedding ``embeddings.word``. A *unit* is one
factorization problem: a single target, or (grouped mode) one module type over a group of
blocks, solved jointly.

A compressed model is a plain model whose ``ModelConfig`` records each compressed module's
form (``forms``: low-rank with its rank, decoded with its code size and decoder, a shared
basis or decoder by its group's name; ``word_rank`` for a low-rank word embedding).
:func:`save_factorized` is :func:`gearshift.runtime.save_model` plus the method config
(``factorize``) and the compression report in gearshift.json; model.safetensors holds every
tensor once (a basis or decoder shared by a group under its first member's name).
:func:`load_factorized` loads such a folder, and the folders of kind ``"factorized-model"``
that gearshift wrote before the config recorded forms (their module and group entries
become forms).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gearshift.constants import CONFIG_NAME
from gearshift.errors import ArtifactError, ConfigError
from gearshift.methods.factorize.config import EMBEDDING_TYPE, LINEAR_TYPES, FactorizeConfig
from gearshift.runtime.config import ModelConfig
from gearshift.runtime.edits import record_forms, unique_state
from gearshift.runtime.forms import (
    COMPRESSED_TYPES,
    DecodedEmbedding,
    LowRankEmbedding,
    materialize,
    replace_module,
)
from gearshift.runtime.io import folder_kind, load_model, read_meta, read_weights, save_model
from gearshift.runtime.model import Transformer
from gearshift.runtime.quant import Int8Linear

LEGACY_KIND = "factorized-model"  # folders written before ModelConfig recorded forms
KIND = LEGACY_KIND  # the name FOLDER_KINDS and older code use

__all__ = [
    "Target",
    "Unit",
    "densify",
    "find_targets",
    "is_factorized_folder",
    "load_factorized",
    "materialize",
    "plan_units",
    "replace_module",
    "save_factorized",
    "unique_state",
]


# ---------------------------------------------------------------------- targets and units
@dataclass
class Target:
    """One weight matrix to compress: its module path, type, block and the module itself."""

    name: str
    type: str
    block: int | None
    module: nn.Module

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight.detach()


@dataclass
class Unit:
    """One factorization problem: one target, or one module type over a group of blocks."""

    name: str
    type: str
    members: list[Target]
    ratio: float

    @property
    def grouped(self) -> bool:
        return len(self.members) > 1


def find_targets(model: Transformer, config: FactorizeConfig) -> list[Target]:
    """The dense Linears and embedding ``config`` selects, in model order.

    Zero-size Linears (pruned away) are skipped; a module that is already compressed is an
    error (compress the original model instead).
    """
    blocks = list(range(len(model.blocks))) if config.layers is None else sorted(set(config.layers))
    bad = [b for b in blocks if b >= len(model.blocks)]
    if bad:
        raise ConfigError(
            f"layers {bad} do not exist: the model has {len(model.blocks)} parameter blocks"
        )
    targets: list[Target] = []
    if EMBEDDING_TYPE in config.modules:
        word = model.embeddings.word
        if isinstance(word, COMPRESSED_TYPES):
            raise ConfigError(
                "embeddings.word is already compressed (low rank or decoded); compress the "
                "original model, or leave embeddings.word out of modules"
            )
        targets.append(Target(EMBEDDING_TYPE, EMBEDDING_TYPE, None, word))
    for b in blocks:
        for kind in LINEAR_TYPES:
            if kind not in config.modules:
                continue
            name = f"blocks.{b}.{kind}"
            module = model.get_submodule(name)
            if isinstance(module, COMPRESSED_TYPES):
                raise ConfigError(f"{name} is already compressed; compress the original model")
            if isinstance(module, Int8Linear):
                raise ConfigError(
                    f"{name} is int8: factorize needs float weights; factorize first, then "
                    "quantize (int8 then applies to the low-rank factors)"
                )
            if module.weight.numel() == 0:
                continue
            targets.append(Target(name, kind, b, module))
    return targets


def plan_units(targets: list[Target], config: FactorizeConfig) -> list[Unit]:
    """Group targets into units: per target, or (grouped) per module type and block group."""
    group_types = set(LINEAR_TYPES if config.group_modules is None else config.group_modules)
    units: list[Unit] = []
    by_type: dict[str, list[Target]] = {}
    for t in targets:
        if config.grouped and t.type in group_types:
            by_type.setdefault(t.type, []).append(t)
        else:
            units.append(Unit(t.name, t.type, [t], config.ratio_for(t.type)))
    for kind, members in by_type.items():
        size = config.group_size or len(members)
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            shapes: dict[tuple, list[Target]] = {}
            for t in chunk:  # pruned blocks of another width form their own group
                shapes.setdefault(tuple(t.weight.shape), []).append(t)
            for same in shapes.values():
                if len(same) == 1:
                    units.append(Unit(same[0].name, kind, same, config.ratio_for(kind)))
                else:
                    name = f"{kind}@{same[0].block}-{same[-1].block}"
                    units.append(Unit(name, kind, same, config.ratio_for(kind)))
    return units


def compressed_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The compressed modules of ``model`` by name, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, COMPRESSED_TYPES)}


def densify(model: nn.Module) -> nn.Module:
    """Replace every compressed module of ``model`` by a plain ``nn.Linear`` / ``nn.Embedding``
    holding its rebuilt weight (in place; returns ``model``). The model computes the same
    function and is stored and trained as an uncompressed model: what a diagnosis needs to
    tell the compressed form's start from its parametrisation."""
    for name, m in list(compressed_modules(model).items()):
        if any(isinstance(sub, Int8Linear) for sub in m.modules()):
            raise ConfigError(f"densify: {name} has int8 factors; densify before quantizing")
        with torch.no_grad():
            weight = m.weight  # rebuilt; copied once, into the plain module below
        like = {"device": weight.device, "dtype": weight.dtype}  # a half model stays half
        if isinstance(m, LowRankEmbedding | DecodedEmbedding):
            dense: nn.Module = nn.Embedding(*weight.shape, padding_idx=m.padding_idx, **like)
        else:
            dense = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, **like)
            if m.bias is not None:
                dense.bias.data.copy_(m.bias.detach())
        dense.weight.data.copy_(weight)
        replace_module(model, name, dense)
    for attr in ("factorize_config", "factorize_report"):
        if hasattr(model, attr):
            delattr(model, attr)
    if hasattr(model, "config"):
        record_forms(model)
    return model


# ---------------------------------------------------------------------- save / load
def save_factorized(
    model: Transformer,
    folder: str | os.PathLike,
    config: FactorizeConfig | None = None,
    tokenizer: Any = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save a compressed model as a gearshift model folder in its compressed form; return
    its path. gearshift.json adds the method config (``factorize``) and the compression
    report to the model config, which records every compressed module's form.

    ``config`` defaults to the one :func:`compress` recorded on the model; ``extra`` adds
    entries to gearshift.json (e.g. the task a teacher was trained on).
    """
    config = config or getattr(model, "factorize_config", None)
    if config is None:
        raise ConfigError("save_factorized needs the FactorizeConfig the model was compressed with")
    if not compressed_modules(model):
        raise ConfigError("the model has no compressed modules: save it with runtime.save_model")
    record_forms(model)  # modules built by hand (or before compress recorded them) count too
    report = getattr(model, "factorize_report", None)
    meta = {
        "factorize": config.to_dict(),
        **({"compression": report.summary_dict()} if report is not None else {}),
        **(extra or {}),
    }
    return save_model(model, folder, tokenizer=tokenizer, extra=meta)


def is_factorized_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a model saved by :func:`save_factorized` (it records the
    factorize config), in today's format or the older ``factorized-model`` one."""
    kind = folder_kind(folder)
    if kind == LEGACY_KIND:
        return True
    return kind == "model" and "factorize" in read_meta(folder)


def load_factorized(folder: str | os.PathLike) -> Transformer:
    """Load a folder written by :func:`save_factorized` (or an older ``factorized-model``
    folder); outputs equal the saved model's. The method config is ``model.factorize_config``."""
    folder = Path(folder)
    meta = read_meta(folder)
    where = folder / CONFIG_NAME
    kind = meta.get("kind", "model")
    if kind == "model" and "factorize" in meta:
        model = load_model(folder)
    elif kind == LEGACY_KIND:
        model = _load_legacy(folder, meta)
    else:
        raise ArtifactError(
            f"{where} is a {kind!r} folder without a 'factorize' entry, not a compressed model: "
            "load a plain model with gearshift.runtime.load_model"
        )
    model.factorize_config = FactorizeConfig.from_dict(meta["factorize"])
    return model


# ---------------------------------------------------------------------- older folders
def legacy_forms(
    modules: dict[str, dict[str, Any]], groups: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], int | None]:
    """``(forms, word_rank)`` from the ``modules`` and ``groups`` entries of a
    ``factorized-model`` gearshift.json; KeyError names an entry's missing field."""
    forms: dict[str, dict[str, Any]] = {}
    word_rank = None
    for name, spec in modules.items():
        kind, group = spec["type"], spec.get("group")
        if group is not None and group not in groups:
            raise ArtifactError(
                f"{name} belongs to group {group!r}, which is not listed in 'groups'"
            )
        if kind == "low_rank_embedding":
            if name != EMBEDDING_TYPE:
                raise ArtifactError(f"a low-rank embedding at {name!r}: only {EMBEDDING_TYPE}")
            word_rank = spec["rank"]
            continue
        if kind == "low_rank_linear":
            form: dict[str, Any] = {"form": "low-rank", "rank": spec["rank"]}
        elif kind in ("decoded_linear", "decoded_embedding"):
            form = {"form": "decoded", "code_size": spec["code_size"], "decoder": spec["decoder"]}
            if kind == "decoded_linear":
                form["transposed"] = spec["transposed"]
        else:
            raise ArtifactError(f"unknown compressed module type {kind!r} for {name}")
        if group is not None:
            form["shared"] = group
        forms[name] = form
    return forms, word_rank


def _load_legacy(folder: Path, meta: dict[str, Any]) -> Transformer:
    where = folder / CONFIG_NAME
    for key in ("modules", "factorize"):
        if not isinstance(meta.get(key), dict):
            raise ArtifactError(
                f"{where} has no {key!r} entry; re-save the model with save_factorized"
            )
    config = ModelConfig.from_dict(meta["config"])
    try:
        config.forms, config.word_rank = legacy_forms(meta["modules"], meta.get("groups") or {})
        config.validate()
        model = Transformer(config)
    except KeyError as exc:
        raise ArtifactError(f"{where}: a module entry lacks {exc}; re-save the model") from exc
    except (ArtifactError, ConfigError) as exc:
        raise ArtifactError(f"{where}: {exc}") from exc
    state = read_weights(folder, unique_state(model))
    model.load_state_dict(state, strict=False)  # aliases of shared tensors are filled by sharing
    model.eval()
    materialize(model)
    return model
