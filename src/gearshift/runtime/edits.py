"""Model edits as data: ``ModelConfig.forms`` <-> the modules of a model.

A model edit (factorize, slim's embedding rank, int8) swaps modules of a
:class:`~gearshift.runtime.Transformer` for other forms and records what it did in the
model's config. This module holds the two directions and what saving needs:

- :func:`build_forms`: put empty modules of the recorded forms into a freshly built model
  (``Transformer(config)`` calls it), shared bases and decoders shared again;
- :func:`record_forms`: write ``config.forms`` and ``config.word_rank`` from the modules (an
  edit calls it when done); :func:`check_forms` refuses to save a model whose config says
  otherwise;
- :func:`unique_state`: the state dict with every tensor once (a shared basis, decoder or
  int8 module under its first path only), which is what a folder stores;
- :func:`quantize_int8`: the int8 edit, on dense and low-rank Linears alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from gearshift.errors import ConfigError
from gearshift.runtime.config import WORD_EMBEDDING
from gearshift.runtime.forms import (
    DecodedEmbedding,
    DecodedLinear,
    LowRankEmbedding,
    LowRankLinear,
    RowDecoder,
    replace_module,
)
from gearshift.runtime.quant import QSCHEMES, Int8Linear


# ---------------------------------------------------------------------- config -> modules
def _decoder(spec: dict[str, Any]) -> RowDecoder:
    return RowDecoder(spec["code_size"], spec["row_size"], spec["widths"], spec["negative_slope"])


def build_forms(model: nn.Module) -> None:
    """Replace the modules ``model.config.forms`` names by empty modules of their forms (in
    place; weights come from a state dict). Parents are built before their factors' int8
    entries; entries sharing a ``"shared"`` name get one basis or decoder object.

    Raises ConfigError naming the entry whose path or shape does not fit the model."""
    forms = model.config.forms
    shared: dict[str, nn.Module] = {}
    int8: dict[int, Int8Linear] = {}  # id(float Linear) -> its int8 module (shared bases)
    for path in sorted(forms, key=lambda p: p.count(".")):
        spec = forms[path]
        where = f"ModelConfig.forms[{path!r}]"
        try:
            current = model.get_submodule(path)
        except AttributeError as exc:
            raise ConfigError(
                f"{where}: the model has no module {path!r} (its config has "
                f"{model.config.num_blocks} blocks); the entry comes from another model"
            ) from exc
        kind, name = spec["form"], spec.get("shared")
        if kind == "int8":
            if id(current) not in int8:
                if not isinstance(current, nn.Linear):
                    raise ConfigError(f"{where}: int8 needs a Linear, {path} is {_what(current)}")
                int8[id(current)] = _named_like(
                    current,
                    Int8Linear(
                        current.in_features,
                        current.out_features,
                        current.bias is not None,
                        spec["qscheme"],
                    ),
                )
            replace_module(model, path, int8[id(current)])
            continue
        part = shared.get(name) if name is not None else None
        if kind == "decoded" and isinstance(current, nn.Embedding):
            part = part if part is not None else _decoder(spec["decoder"])
            new: nn.Module = DecodedEmbedding(
                current.num_embeddings,
                current.embedding_dim,
                spec["code_size"],
                part,
                current.padding_idx,
            )
        elif not isinstance(current, nn.Linear):
            raise ConfigError(f"{where}: {kind} needs a dense Linear, {path} is {_what(current)}")
        elif kind == "low-rank":
            if part is None:
                part = nn.Linear(current.in_features, spec["rank"], bias=False)
            try:
                new = LowRankLinear(
                    current.in_features,
                    current.out_features,
                    spec["rank"],
                    current.bias is not None,
                    basis=part,
                )
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from exc
        else:
            part = part if part is not None else _decoder(spec["decoder"])
            try:
                new = DecodedLinear(
                    current.in_features,
                    current.out_features,
                    spec["code_size"],
                    part,
                    current.bias is not None,
                    bool(spec.get("transposed", False)),
                )
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from exc
        if name is not None:  # the basis or decoder is the group's, under its name
            part.group_name = name
            shared[name] = part
        replace_module(model, path, new)


def _named_like(old: nn.Module, new: nn.Module) -> nn.Module:
    """``new`` with ``old``'s group name (a shared basis keeps its name when it becomes int8)."""
    if hasattr(old, "group_name"):
        new.group_name = old.group_name
    return new


def _what(module: nn.Module) -> str:
    return f"a {type(module).__name__}"


# ---------------------------------------------------------------------- modules -> config
def _shared_part(module: nn.Module) -> nn.Module | None:
    if isinstance(module, LowRankLinear):
        return module.basis
    if isinstance(module, DecodedLinear | DecodedEmbedding):
        return module.decoder
    return None


def forms_of(model: nn.Module) -> tuple[dict[str, dict[str, Any]], int | None]:
    """Return ``(forms, word_rank)`` describing the edited modules of ``model`` as
    ``ModelConfig`` records them. A basis or decoder used by several modules is named by its
    ``group_name`` (set by the edit that made it) or else by its first member's path."""
    found: list[tuple[str, nn.Module]] = []
    members: dict[int, list[str]] = {}
    for path, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, LowRankEmbedding) and path != WORD_EMBEDDING:
            raise ConfigError(f"{path}: a low-rank embedding is only supported as {WORD_EMBEDDING}")
        if isinstance(m, LowRankLinear | DecodedLinear | DecodedEmbedding | Int8Linear):
            found.append((path, m))
            part = _shared_part(m)
            if part is not None:
                members.setdefault(id(part), []).append(path)
    forms: dict[str, dict[str, Any]] = {}
    for path, m in found:
        if isinstance(m, Int8Linear):
            forms[path] = {"form": "int8", "qscheme": m.qscheme}
            continue
        if isinstance(m, LowRankLinear):
            spec: dict[str, Any] = {"form": "low-rank", "rank": m.rank}
        else:
            spec = {"form": "decoded", "code_size": m.code_size, "decoder": m.decoder.spec()}
            if isinstance(m, DecodedLinear):
                spec["transposed"] = m.transposed
        group = members[id(_shared_part(m))]
        if len(group) > 1:
            spec["shared"] = getattr(_shared_part(m), "group_name", None) or group[0]
        forms[path] = spec
    word = model.get_submodule(WORD_EMBEDDING) if hasattr(model, "embeddings") else None
    word_rank = word.rank if isinstance(word, LowRankEmbedding) else None
    return forms, word_rank


def record_forms(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Write the forms of ``model``'s modules into ``model.config`` (``forms`` and
    ``word_rank``); return the forms. Every model edit calls it when done."""
    forms, word_rank = forms_of(model)
    model.config.forms, model.config.word_rank = forms, word_rank
    model.config.validate()
    return forms


def check_forms(model: nn.Module) -> None:
    """Raise ConfigError when ``model.config`` does not describe the model's modules (an
    edit swapped modules without :func:`record_forms`): such a folder would not reload."""
    forms, word_rank = forms_of(model)
    recorded = model.config.forms
    wrong = sorted(
        p
        for p in set(forms) | set(recorded)
        if json.dumps(forms.get(p), sort_keys=True) != json.dumps(recorded.get(p), sort_keys=True)
    )
    if word_rank != model.config.word_rank:
        wrong.insert(0, f"word_rank (modules: {word_rank}, config: {model.config.word_rank})")
    if wrong:
        raise ConfigError(
            f"model.config does not describe the model's modules: {', '.join(wrong[:6])} "
            "differ; call gearshift.runtime.edits.record_forms(model) after swapping modules"
        )


# ---------------------------------------------------------------------- state
def _storage_key(t: torch.Tensor, key: str) -> tuple:
    if t.numel() == 0 or t.device.type == "meta":
        return ("key", key)
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())


def unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with every tensor once, under its first name: a module reachable under
    several paths (a shared basis or decoder, a shared int8 basis) is kept under the first
    only, and so is a tensor two parameters view."""
    first: set[int] = set()
    aliases: list[str] = []
    for path, m in model.named_modules(remove_duplicate=False):
        if id(m) in first:
            aliases.append(path + ".")
        first.add(id(m))
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for key, t in model.state_dict().items():
        if any(key.startswith(a) for a in aliases):
            continue
        ident = _storage_key(t, key)
        if ident in seen:
            continue
        seen.add(ident)
        out[key] = t
    return out


# ---------------------------------------------------------------------- int8
def _int8_targets(model: nn.Module, modules: Iterable[str] | None) -> list[str]:
    """Paths of the float Linears to quantize (every alias path of a shared one)."""
    by_path = dict(model.named_modules(remove_duplicate=False))
    if modules is None:
        return [
            p
            for p, m in by_path.items()
            if p.startswith("blocks.") and type(m) is nn.Linear and m.weight.numel()
        ]
    paths: list[str] = []
    for name in modules:
        m = by_path.get(name)
        if m is None:
            raise ConfigError(f"int8: the model has no module {name!r}")
        if isinstance(m, Int8Linear):
            raise ConfigError(f"int8: {name} is already int8")
        if isinstance(m, DecodedLinear | DecodedEmbedding):
            raise ConfigError(
                f"int8: {name} is decoded (autoencoder codes rebuilt into a float weight); "
                "int8 would store the rebuilt weight and drop the codes. Densify it first "
                "(gearshift.methods.factorize.densify) or leave it out of modules"
            )
        if isinstance(m, LowRankLinear):
            factors = [f"{name}.basis", f"{name}.coefficients"]
            paths += [f for f in factors if type(by_path[f]) is nn.Linear]
            continue
        if type(m) is not nn.Linear:
            raise ConfigError(f"int8: {name} is {_what(m)}, not a Linear")
        if not m.weight.numel():
            raise ConfigError(f"int8: {name} has no weights (pruned to width 0)")
        paths.append(name)
    # a shared basis named under one member is quantized under every member
    chosen = {id(by_path[p]) for p in paths}
    return [p for p, m in by_path.items() if id(m) in chosen and type(m) is nn.Linear]


def quantize_int8(
    model: nn.Module, modules: Iterable[str] | None = None, qscheme: str = "per-channel"
) -> nn.Module:
    """Quantize Linears of ``model`` to int8 with torch's dynamic quantization, in place;
    returns ``model``, its config recording each one as ``{"form": "int8"}``.

    ``modules``: module paths; a low-rank module's path quantizes both its factors. None
    quantizes every Linear with weights in the transformer blocks: dense ones, and the
    factors of low-rank ones (a shared basis once); decoded modules stay decoded (their
    storage is already the codes), the embeddings and the task head stay float.
    ``qscheme``: one scale and zero point per output row ("per-channel", torch's
    ``per_channel_dynamic_qconfig``) or per matrix ("per-tensor", ``default_dynamic_qconfig``).

    The model must be float32 on CPU (torch's dynamic quantization runs there); quantize
    last: pruning and factorizing need float weights and refuse int8 ones.
    """
    if qscheme not in QSCHEMES:
        raise ConfigError(f"int8 qscheme {qscheme!r} unknown; use one of {', '.join(QSCHEMES)}")
    if not hasattr(model, "config") or not hasattr(model.config, "forms"):
        raise ConfigError(
            f"quantize_int8 edits a gearshift Transformer, not a {type(model).__name__}: pass "
            "the base model (a wrapper's .base) and attach the wrapper again"
        )
    paths = _int8_targets(model, None if modules is None else list(modules))
    if not paths:
        raise ConfigError("int8: no Linear with weights to quantize in the chosen modules")
    made: dict[int, Int8Linear] = {}
    for path in paths:
        linear = model.get_submodule(path)
        if id(linear) not in made:
            made[id(linear)] = _named_like(linear, Int8Linear.from_linear(linear, qscheme))
        replace_module(model, path, made[id(linear)])
    record_forms(model)
    return model
