"""Where compression attaches to a model, and the compressed model as a gearshift folder.

Targets are the runtime's named Linears, ``blocks[i].attn.{q,k,v,o}`` and
``blocks[i].ffn.{inp,out}``, and the word embedding ``embeddings.word``. A *unit* is one
factorization problem: a single target, or (grouped mode) one module type over a group of
blocks, solved jointly.

A compressed model saves as a folder in its compressed form:

- ``gearshift.json``: ``kind: "factorized-model"``, the model config, the method config
  (``factorize``), one entry per compressed module (its type, shape, rank or code size, its
  group) and one per group (the shared basis or decoder and its members);
- ``model.safetensors``: every tensor once: factors, codes, norms, decoders, and the
  uncompressed rest; a basis or decoder shared by a group is stored under its first
  member's name only.

:func:`load_factorized` rebuilds ``Transformer(config)``, swaps in empty compressed modules
of the saved shapes (shared ones shared again), loads the weights and rebuilds the decoded
weights once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from gearshift.constants import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME
from gearshift.errors import ArtifactError, ConfigError
from gearshift.methods.factorize.config import EMBEDDING_TYPE, LINEAR_TYPES, FactorizeConfig
from gearshift.methods.factorize.modules import (
    COMPRESSED_TYPES,
    DecodedEmbedding,
    DecodedLinear,
    LowRankEmbedding,
    LowRankLinear,
    RowDecoder,
)
from gearshift.runtime.config import ModelConfig
from gearshift.runtime.io import (
    folder_kind,
    read_meta,
    read_weights,
    write_folder_atomically,
)
from gearshift.runtime.model import Transformer

KIND = "factorized-model"


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
            raise ConfigError("embeddings.word is already compressed; compress the original model")
        targets.append(Target(EMBEDDING_TYPE, EMBEDDING_TYPE, None, word))
    for b in blocks:
        for kind in LINEAR_TYPES:
            if kind not in config.modules:
                continue
            name = f"blocks.{b}.{kind}"
            module = model.get_submodule(name)
            if isinstance(module, COMPRESSED_TYPES):
                raise ConfigError(f"{name} is already compressed; compress the original model")
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


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` is."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def compressed_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The compressed modules of ``model`` by name, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, COMPRESSED_TYPES)}


def densify(model: nn.Module) -> nn.Module:
    """Replace every compressed module of ``model`` by a plain ``nn.Linear`` / ``nn.Embedding``
    holding its rebuilt weight (in place; returns ``model``). The model computes the same
    function and is stored and trained as an uncompressed model: what a diagnosis needs to
    tell the compressed form's start from its parametrisation."""
    for name, m in list(compressed_modules(model).items()):
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
    return model


def materialize(model: nn.Module) -> None:
    """Rebuild every decoded weight now (done at load time and after compression)."""
    for m in model.modules():
        if isinstance(m, DecodedLinear | DecodedEmbedding):
            m.materialize()


# ---------------------------------------------------------------------- module specs
def module_spec(module: nn.Module, group: str | None) -> dict[str, Any]:
    """What rebuilds an empty copy of a compressed module (saved in gearshift.json)."""
    if isinstance(module, LowRankLinear):
        return {
            "type": "low_rank_linear",
            "in_features": module.in_features,
            "out_features": module.out_features,
            "rank": module.rank,
            "bias": module.bias is not None,
            "group": group,
        }
    if isinstance(module, LowRankEmbedding):
        return {
            "type": "low_rank_embedding",
            "num_embeddings": module.num_embeddings,
            "embedding_dim": module.embedding_dim,
            "rank": module.rank,
            "padding_idx": module.padding_idx,
            "group": group,
        }
    if isinstance(module, DecodedLinear):
        return {
            "type": "decoded_linear",
            "in_features": module.in_features,
            "out_features": module.out_features,
            "code_size": module.code_size,
            "bias": module.bias is not None,
            "transposed": module.transposed,
            "decoder": module.decoder.spec(),
            "group": group,
        }
    if isinstance(module, DecodedEmbedding):
        return {
            "type": "decoded_embedding",
            "num_embeddings": module.num_embeddings,
            "embedding_dim": module.embedding_dim,
            "code_size": module.code_size,
            "padding_idx": module.padding_idx,
            "decoder": module.decoder.spec(),
            "group": group,
        }
    raise TypeError(f"{type(module).__name__} is not a compressed module")


def _shared_part(module: nn.Module) -> nn.Module | None:
    if isinstance(module, LowRankLinear):
        return module.basis
    if isinstance(module, DecodedLinear | DecodedEmbedding):
        return module.decoder
    return None


def describe(model: nn.Module) -> tuple[dict[str, dict], dict[str, dict]]:
    """Return (modules, groups): the specs of every compressed module, and of each shared
    basis/decoder with its members. A shared part's group is named by ``group_name`` (set
    by compress) or else by its first member."""
    modules = compressed_modules(model)
    owners: dict[int, list[str]] = {}
    parts: dict[int, nn.Module] = {}
    for name, m in modules.items():
        part = _shared_part(m)
        if part is not None:
            owners.setdefault(id(part), []).append(name)
            parts[id(part)] = part
    groups: dict[str, dict] = {}
    group_of: dict[str, str] = {}
    for key, names in owners.items():
        if len(names) < 2:
            continue
        part = parts[key]
        gname = getattr(part, "group_name", None) or names[0]
        if isinstance(part, RowDecoder):
            groups[gname] = {"kind": "decoder", "decoder": part.spec(), "members": names}
        else:
            groups[gname] = {
                "kind": "basis",
                "in_features": part.in_features,
                "rank": part.out_features,
                "members": names,
            }
        for n in names:
            group_of[n] = gname
    specs = {name: module_spec(m, group_of.get(name)) for name, m in modules.items()}
    return specs, groups


def _build(spec: dict[str, Any], shared: nn.Module | None) -> nn.Module:
    kind = spec["type"]
    if kind == "low_rank_linear":
        return LowRankLinear(
            spec["in_features"], spec["out_features"], spec["rank"], spec["bias"], basis=shared
        )
    if kind == "low_rank_embedding":
        return LowRankEmbedding(
            spec["num_embeddings"], spec["embedding_dim"], spec["rank"], spec["padding_idx"]
        )
    decoder = shared if shared is not None else _decoder(spec["decoder"])
    if kind == "decoded_linear":
        return DecodedLinear(
            spec["in_features"],
            spec["out_features"],
            spec["code_size"],
            decoder,
            spec["bias"],
            spec["transposed"],
        )
    if kind == "decoded_embedding":
        return DecodedEmbedding(
            spec["num_embeddings"],
            spec["embedding_dim"],
            spec["code_size"],
            decoder,
            spec["padding_idx"],
        )
    raise ArtifactError(f"unknown compressed module type {kind!r}")


def _decoder(spec: dict[str, Any]) -> RowDecoder:
    return RowDecoder(spec["code_size"], spec["row_size"], spec["widths"], spec["negative_slope"])


def _shared_from_group(group: dict[str, Any]) -> nn.Module:
    if group["kind"] == "decoder":
        return _decoder(group["decoder"])
    if group["kind"] == "basis":
        return nn.Linear(group["in_features"], group["rank"], bias=False)
    raise ArtifactError(f"unknown group kind {group['kind']!r}")


# ---------------------------------------------------------------------- save / load
def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with every shared tensor kept once, under its first name."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for key, t in model.state_dict().items():
        ident = (
            (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
            if t.numel()
            else ("key", key)
        )
        if ident in seen:
            continue
        seen.add(ident)
        out[key] = t
    return out


def save_factorized(
    model: Transformer,
    folder: str | os.PathLike,
    config: FactorizeConfig | None = None,
    tokenizer: Any = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save a compressed model as a gearshift folder in its compressed form; return its path.

    ``config`` defaults to the one :func:`compress` recorded on the model; ``extra`` adds
    entries to gearshift.json (e.g. the task a teacher was trained on).
    """
    config = config or getattr(model, "factorize_config", None)
    if config is None:
        raise ConfigError("save_factorized needs the FactorizeConfig the model was compressed with")
    modules, groups = describe(model)
    if not modules:
        raise ConfigError("the model has no compressed modules: save it with runtime.save_model")
    report = getattr(model, "factorize_report", None)

    def write(tmp: Path) -> None:
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "config": model.config.to_dict(),
            "factorize": config.to_dict(),
            "modules": modules,
            "groups": groups,
            **({"compression": report.summary_dict()} if report is not None else {}),
            **(extra or {}),
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in unique_state(model).items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "kind": KIND})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))

    return write_folder_atomically(folder, write)


def is_factorized_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a model saved by :func:`save_factorized`."""
    return folder_kind(folder) == KIND


def load_factorized(folder: str | os.PathLike) -> Transformer:
    """Load a folder written by :func:`save_factorized`; outputs equal the saved model's."""
    folder = Path(folder)
    meta = read_meta(folder)
    where = folder / CONFIG_NAME
    if meta.get("kind") != KIND:
        raise ArtifactError(
            f"{where} has kind {meta.get('kind')!r}, not {KIND!r}: load a plain model with "
            "gearshift.runtime.load_model"
        )
    for key in ("modules", "factorize"):
        if not isinstance(meta.get(key), dict):
            raise ArtifactError(
                f"{where} has no {key!r} entry; re-save the model with save_factorized"
            )
    config = ModelConfig.from_dict(meta["config"])
    fconfig = FactorizeConfig.from_dict(meta["factorize"])
    model = Transformer(config)
    groups = meta.get("groups") or {}
    shared: dict[str, nn.Module] = {}
    for name, spec in meta["modules"].items():
        try:
            current = model.get_submodule(name)
        except AttributeError as exc:
            raise ArtifactError(
                f"{where}: module {name!r} does not exist in the model its config describes"
            ) from exc
        try:
            group = spec.get("group")
            part = None
            if group is not None:
                if group not in groups:
                    raise ArtifactError(
                        f"{where}: {name} belongs to group {group!r}, which is not listed in 'groups'"
                    )
                if group not in shared:
                    shared[group] = _shared_from_group(groups[group])
                    shared[group].group_name = group
                part = shared[group]
            new = _build(spec, part)
        except KeyError as exc:
            raise ArtifactError(
                f"{where}: the entry of {name} lacks {exc}; re-save the model"
            ) from exc
        _check_fits(where, name, current, new)
        replace_module(model, name, new)
    state = read_weights(folder, unique_state(model))
    model.load_state_dict(state, strict=False)  # aliases of shared tensors are filled by sharing
    model.factorize_config = fconfig
    model.eval()
    materialize(model)
    return model


def _check_fits(where: Path, name: str, current: nn.Module, new: nn.Module) -> None:
    if isinstance(current, nn.Linear):
        ok = isinstance(new, LowRankLinear | DecodedLinear) and (
            new.in_features,
            new.out_features,
        ) == (current.in_features, current.out_features)
    elif isinstance(current, nn.Embedding):
        ok = isinstance(new, LowRankEmbedding | DecodedEmbedding) and (
            new.num_embeddings,
            new.embedding_dim,
        ) == (current.num_embeddings, current.embedding_dim)
    else:
        ok = False
    if not ok:
        raise ArtifactError(
            f"{where}: the saved {name} ({type(new).__name__}) does not fit the model's "
            f"{type(current).__name__} of that name; the file is damaged or from another model"
        )
