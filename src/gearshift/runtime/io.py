"""Loading Hugging Face checkpoints into the runtime, and gearshift's own folders.

A gearshift folder is ``gearshift.json`` (what it is, the model config with per-block shapes,
where it came from, task and method info) + ``model.safetensors`` + tokenizer files.
Folders are written atomically: into a temporary sibling, then renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gearshift import backbones
from gearshift.atomic import atomic_directory
from gearshift.constants import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME
from gearshift.errors import ArtifactError, ConfigError
from gearshift.paths import resolve_model_name
from gearshift.runtime.config import BlockShape, HeadConfig, ModelConfig
from gearshift.runtime.edits import check_forms, unique_state
from gearshift.runtime.forms import materialize
from gearshift.runtime.model import Transformer

logger = logging.getLogger("gearshift.runtime")

HEAD_INIT_STD = 0.02


# ---------------------------------------------------------------------- HF checkpoints
def config_from_hf(
    hf_config: Any,
    head_kind: str | None = None,
    num_labels: int = 0,
    label_names: list[str] | None = None,
) -> ModelConfig:
    """Translate an HF config into a ModelConfig with the requested head."""
    bb = backbones.for_model_type(hf_config.model_type)
    kw = bb.read_config(hf_config)
    num_heads, inter = kw.pop("num_heads"), kw.pop("intermediate_size")
    n_blocks = kw.pop("num_blocks", kw["num_layers"])
    kw.setdefault("layer_to_block", list(range(kw["num_layers"])))
    if kw["hidden_size"] % num_heads:
        raise ArtifactError(
            f"hidden size {kw['hidden_size']} is not divisible by {num_heads} heads"
        )
    dropout = bb.read_head_dropout(hf_config) if bb.read_head_dropout else 0.1
    head = HeadConfig(
        kind=head_kind,
        num_labels=num_labels,
        label_names=label_names,
        dropout=dropout if dropout is not None else 0.1,
        **bb.head_defaults,
    )
    if head_kind in ("lm", "token_classification"):
        head.dense_activation = None
    if head_kind == "token_classification":
        head.output_bias = True  # every family's token classifier has a bias
    return ModelConfig(
        head_dim=kw["hidden_size"] // num_heads,
        blocks=[BlockShape(num_heads, inter) for _ in range(n_blocks)],
        head=head,
        **kw,
    )


def _hf_head_from_config(hf_config: Any) -> tuple[str | None, int, list[str] | None]:
    """Guess the head an HF checkpoint carries from its `architectures` and labels."""
    archs = " ".join(getattr(hf_config, "architectures", None) or [])
    id2label = getattr(hf_config, "id2label", None) or {}
    names = [id2label[i] for i in sorted(id2label)] if id2label else None
    n = len(names) if names else 0
    if "SequenceClassification" in archs:
        if getattr(hf_config, "problem_type", None) == "regression" or n == 1:
            return "regression", 1, None
        return "classification", n, names
    if "TokenClassification" in archs:
        return "token_classification", n, names
    if "LMHead" in archs or "CausalLM" in archs:
        return "lm", 0, None
    return None, 0, None


def _read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    st = folder / "model.safetensors"
    if st.is_file():
        return load_file(str(st))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(load_file(str(folder / shard)))
        return out
    pt = folder / "pytorch_model.bin"
    if pt.is_file():
        # Only tensors can come out of this: weights_only refuses arbitrary pickled objects.
        return torch.load(str(pt), map_location="cpu", weights_only=True)
    raise ArtifactError(
        f"{folder} has no weights: expected model.safetensors (or pytorch_model.bin); "
        "save the model with `save_pretrained` or download the full checkpoint"
    )


def _hf_folder(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        raise ArtifactError(f"model folder {name_or_path} does not exist (or is not a folder)")
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                name_or_path, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]
            )
        )
    except Exception as exc:
        raise ArtifactError(
            f"could not find model {name_or_path!r}: it is not a local folder and the Hugging Face hub "
            f"did not provide it ({type(exc).__name__}). Pass a local checkpoint folder, or 'minilm-l6' "
            "for the built-in MiniLM-L6."
        ) from exc


def load_hf(
    name_or_path: str,
    head_kind: str | None = "auto",
    num_labels: int = 0,
    label_names: list[str] | None = None,
) -> Transformer:
    """Load a Hugging Face checkpoint (folder or hub name) into the runtime.

    ``head_kind="auto"`` keeps the head the checkpoint carries (or none); an explicit kind
    attaches that head, reusing the checkpoint's head weights (e.g. BERT's pooler) where they
    fit and initialising the rest as HF does (normal, std 0.02). Returns the model in eval mode.
    """
    from transformers import AutoConfig

    folder = _hf_folder(resolve_model_name(name_or_path))
    if not (folder / "config.json").is_file():
        raise ArtifactError(
            f"{folder} is not a model folder: it has neither {CONFIG_NAME} (a gearshift model) "
            "nor config.json (a Hugging Face checkpoint); pass the folder a model was saved to"
        )
    hf_config = AutoConfig.from_pretrained(str(folder))
    if head_kind == "auto":
        head_kind, num_labels, label_names = _hf_head_from_config(hf_config)
    config = config_from_hf(hf_config, head_kind, num_labels, label_names)
    config.source = name_or_path
    bb = backbones.for_model_type(hf_config.model_type)
    state, unused = bb.convert(_read_hf_weights(folder), head_kind)
    model = Transformer(config)
    _init_head(model)
    expected = model.state_dict()
    fresh = [k for k in expected if k not in state]
    not_head = [k for k in fresh if not k.startswith(("head.", "lm_head."))]
    if not_head:
        raise ArtifactError(
            f"{folder}: checkpoint lacks weights the model needs: {', '.join(not_head[:8])}"
        )
    for k, v in state.items():
        if k in expected and expected[k].shape != v.shape:
            raise ArtifactError(
                f"{folder}: weight {k} has shape {tuple(v.shape)}, model expects {tuple(expected[k].shape)}"
            )
    if fresh:
        # an output layer for a new task is expected; a missing pooler is not: the head then
        # starts from random weights where the checkpoint's users expect a trained one
        pooler = [k for k in fresh if k.startswith("head.dense")]
        log = logger.warning if pooler else logger.info
        log(
            "%s: new head weights, trained from scratch: %s%s",
            name_or_path,
            ", ".join(fresh),
            " (the checkpoint has no pooler weights); fine-tune the model on its task "
            "(gearshift finetune) before its scores mean anything"
            if pooler
            else "",
        )
    if unused:
        logger.debug("unused checkpoint weights: %s", ", ".join(unused))
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    # read by gearshift.predict and `gearshift evaluate`, which warn before chance-level output
    model.head_is_fresh = any(k.startswith("head.") for k in fresh)
    return model.eval()


def _init_head(model: Transformer) -> None:
    for module in (model.head, model.lm_head):
        if module is None:
            continue
        for sub in module.modules():
            if isinstance(sub, torch.nn.Linear):
                torch.nn.init.normal_(sub.weight, std=HEAD_INIT_STD)
                if sub.bias is not None:
                    torch.nn.init.zeros_(sub.bias)


def load_tokenizer(name_or_path: str):
    """The tokenizer of an HF checkpoint or a gearshift folder (AutoTokenizer)."""
    from transformers import AutoTokenizer

    path = resolve_model_name(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise ArtifactError(f"could not load a tokenizer from {path}: {exc}") from exc
    if tok.pad_token is None and tok.eos_token is not None:  # GPT-2 has no pad token
        tok.pad_token = tok.eos_token
    return tok


# ---------------------------------------------------------------------- gearshift folders
def write_folder_atomically(folder: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_dir)`` then move the result to ``folder`` in one rename."""
    with atomic_directory(folder) as tmp:
        write(tmp)
    return Path(folder)


def save_model(
    model: Transformer,
    folder: str | os.PathLike,
    tokenizer=None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` as a gearshift folder; returns its path.

    An edited model (factorized, slim, int8, any mix) is a plain model folder: its config
    records every edit (``forms``, ``word_rank``, per-block widths) and model.safetensors
    holds every tensor once (a shared basis or decoder under its first member's name; int8
    weights as int8 values, scales and zero points). Raises ConfigError when the config does
    not describe the modules (an edit that did not record itself)."""
    check_forms(model)

    def write(tmp: Path) -> None:
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": "model",
            "config": model.config.to_dict(),
            **(extra or {}),
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in unique_state(model).items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))

    return write_folder_atomically(folder, write)


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``gearshift.json``; ArtifactError says what is missing or wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} does not exist or is not a folder")
    path = folder / CONFIG_NAME
    if not path.is_file():
        hint = (
            " It looks like a Hugging Face checkpoint: load it by path with load_pretrained."
            if (folder / "config.json").is_file()
            else ""
        )
        raise ArtifactError(f"{folder} is not a gearshift folder: {CONFIG_NAME} is missing.{hint}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            f"{path} is not valid JSON ({exc}): the file is truncated or damaged; re-save the "
            "model, or copy the folder again"
        ) from exc
    if not isinstance(meta, dict) or "config" not in meta:
        raise ArtifactError(
            f"{path} has no 'config' entry: it was not written by gearshift's save_model"
        )
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format version {meta['format_version']}, newer than this gearshift "
            f"({FORMAT_VERSION}); upgrade gearshift"
        )
    return meta


# Folder kinds other than "model" and the functions that load them. The runtime names no
# method: a package declares the kinds it writes as entry points in the group
# "gearshift.folder_kinds" (pyproject.toml; third-party methods can add theirs the same way),
# or registers a loader at run time with :func:`register_folder_kind`.
ENTRY_POINT_GROUP = "gearshift.folder_kinds"
FOLDER_KINDS: dict[str, Any] = {}


def folder_kinds() -> dict[str, Any]:
    """Kind -> loader (a callable, or an entry point that gives one): the registered kinds
    and those packages declare as entry points."""
    from importlib.metadata import entry_points

    kinds = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return kinds | FOLDER_KINDS


NOT_A_MODEL: dict[str, str] = {
    "plugin": (
        "it is a compression plugin, not a model: load its base model, then attach it with "
        "gearshift.methods.plugins.load_plugin(folder, base) (or `gearshift plugin eval "
        "--model BASE --plugin FOLDER`)"
    ),
}


def register_folder_kind(kind: str, loader: Any) -> None:
    """Make :func:`load_model` load folders whose gearshift.json says ``kind`` with
    ``loader(folder)`` (a callable)."""
    if not callable(loader):
        raise ValueError(f"loader for {kind!r} must be callable, got {type(loader).__name__}")
    FOLDER_KINDS[kind] = loader


def folder_kind(folder: str | os.PathLike) -> str | None:
    """The ``kind`` a gearshift folder's gearshift.json records ("model" when it records
    none), or None when ``folder`` is not a readable gearshift folder."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return meta.get("kind", "model") if isinstance(meta, dict) else None


# Tensors saved under older names: (old, new). Slim's low-rank word embedding was two
# modules, ``word`` (V x r) and ``word_project`` (r -> E), before it became the runtime's one
# LowRankEmbedding shared with factorize.
LEGACY_KEYS = (
    ("embeddings.word.weight", "embeddings.word.codes.weight"),
    ("embeddings.word_project.weight", "embeddings.word.projection.weight"),
)


def _renamed_legacy_keys(state: dict, expected: Mapping[str, torch.Tensor]) -> dict:
    """``state`` with tensors saved under an older name moved to the name ``expected`` has."""
    for old, new in LEGACY_KEYS:
        if old in state and old not in expected and new in expected and new not in state:
            state[new] = state.pop(old)
    return state


def read_weights(folder: str | os.PathLike, expected: Mapping[str, torch.Tensor]) -> dict:
    """Read ``folder``'s model.safetensors and check it holds exactly the tensors (names and
    shapes) of ``expected`` (the state dict of the model gearshift.json describes);
    ArtifactError says what is missing, unreadable or different."""
    folder = Path(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ArtifactError(
            f"{folder}: {WEIGHTS_NAME} is missing; the folder holds only "
            f"{', '.join(sorted(p.name for p in folder.iterdir()))}"
        )
    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise ArtifactError(
            f"{weights} cannot be read as safetensors ({exc}); the file is damaged, re-save it"
        ) from exc
    state = _renamed_legacy_keys(state, expected)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ArtifactError(
            f"{weights} does not fit {CONFIG_NAME}: missing {missing[:6]}, unexpected {unexpected[:6]}; "
            "the two files come from different models"
        )
    for k, v in state.items():
        if expected[k].shape != v.shape:
            raise ArtifactError(
                f"{weights}: {k} has shape {tuple(v.shape)} but {CONFIG_NAME} implies "
                f"{tuple(expected[k].shape)}; the two files come from different models"
            )
    return state


def load_model(folder: str | os.PathLike) -> Transformer:
    """Load a model saved by :func:`save_model` (or by a method, whose folder ``kind`` is in
    :data:`FOLDER_KINDS`); outputs are identical to the saved model's."""
    folder = Path(folder)
    meta = read_meta(folder)
    kind = meta.get("kind", "model")
    if kind in NOT_A_MODEL:
        raise ArtifactError(f"{folder} cannot be loaded as a model: {NOT_A_MODEL[kind]}")
    if kind != "model":
        kinds = folder_kinds()
        if kind not in kinds:
            raise ArtifactError(
                f"{folder} holds a {kind!r} folder, which this gearshift cannot load (known: "
                f"model, {', '.join(sorted(kinds))}); upgrade gearshift, or reinstall it "
                "(`pip install -e .`) if its entry points are missing"
            )
        loader = kinds[kind]
        loader = loader.load() if hasattr(loader, "load") else loader
        return loader(folder)
    try:
        model = Transformer(ModelConfig.from_dict(meta["config"]))
    except ConfigError as exc:
        raise ArtifactError(f"{folder / CONFIG_NAME}: {exc}") from exc
    # aliases of a shared basis or decoder are not stored: sharing fills them
    model.load_state_dict(read_weights(folder, unique_state(model)), strict=False)
    materialize(model)
    return model.eval()


def load_pretrained(
    name_or_path: str,
    head_kind: str | None = "auto",
    num_labels: int = 0,
    label_names: list[str] | None = None,
) -> Transformer:
    """Load a gearshift folder, an HF checkpoint folder, a hub name or a built-in alias."""
    path = Path(resolve_model_name(name_or_path)).expanduser()
    if (path / CONFIG_NAME).is_file():
        model = load_model(path)
        head = model.config.head
        keep_labels = head_kind in ("auto", "regression") or not num_labels
        wanted_labels = head.num_labels if keep_labels else num_labels
        if head_kind != "auto" and (head_kind != head.kind or wanted_labels != head.num_labels):
            model.set_head(head_kind, num_labels, label_names)
            _init_head(model)
        return model
    return load_hf(name_or_path, head_kind, num_labels, label_names)
