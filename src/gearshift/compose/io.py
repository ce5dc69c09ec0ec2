"""A stack is one artifact: a folder holding (or naming) its base model and its adapters.

Layout of a stack folder ``S``::

    S/gearshift.json     kind "stack": the providers in attach order (name, kind, folder),
                         the default setting, the named operating points, the base (an
                         embedded folder, or a path with the SHA-256 of its files), and the
                         base's task record (so `gearshift evaluate --model S` finds its task)
    S/base/              the edited model as a plain model folder (runtime.save_model)
    S/<provider>/        one adapter folder per provider (plugins, exits, steps)
    S/tokenizer files    so load_tokenizer(S) works

With ``link_base=True`` the base is not copied: the manifest records its path and the
checksums of its gearshift.json and model.safetensors, and loading refuses a base whose
files changed. Adapters record the base they fit and refuse one that does not.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gearshift.constants import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME
from gearshift.errors import ArtifactError
from gearshift.runtime.io import load_model, read_meta, save_model, write_folder_atomically
from gearshift.runtime.model import Transformer
from gearshift.runtime.stack import PlanProvider, Stack

KIND = "stack"
BASE_FOLDER = "base"
# keys of the base's gearshift.json a stack carries over (what the model is for)
CARRIED_META = ("task", "custom_task", "teacher", "source", "trained_on")


def provider_kinds() -> dict[str, Callable[[Path, Transformer], PlanProvider]]:
    """Adapter folder kind -> loader(folder, base). The methods' providers, imported here
    (compose sits above the methods in the dependency order)."""
    from gearshift.methods.plugins.model import Plugins
    from gearshift.methods.slim.model import Exits
    from gearshift.methods.steps.model import Steps

    return {
        "plugins": Plugins.from_pretrained,
        "plugin": Plugins.from_pretrained,
        "exits": Exits.from_pretrained,
        "steps": Steps.from_pretrained,
    }


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _base_checksums(folder: Path) -> dict[str, str]:
    return {name: file_sha256(folder / name) for name in (CONFIG_NAME, WEIGHTS_NAME)}


def encode_setting(setting: dict[str, Any]) -> dict[str, Any]:
    """A setting as JSON values (criteria and step settings as their spec strings)."""
    out = {}
    for name, value in setting.items():
        if value is None:
            out[name] = None
        else:
            out[name] = getattr(value, "spec", None) or (
                value if isinstance(value, (str, int, float)) else str(value)
            )
    return out


def save_stack(
    stack: Stack,
    folder: str | os.PathLike,
    tokenizer: Any = None,
    base_meta: dict[str, Any] | None = None,
    link_base: str | os.PathLike | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``stack`` as one folder (atomically); returns its path.

    ``base_meta``: the base model's gearshift.json entries to carry over (task record).
    ``link_base``: the folder the base was loaded from, to name instead of copying (its
    files must hold exactly ``stack.base``; their checksums are recorded).
    """
    folder = Path(folder)

    def write(tmp: Path) -> None:
        if link_base is None:
            save_model(stack.base, tmp / BASE_FOLDER, extra=_carried(base_meta))
            base_entry: dict[str, Any] = {"folder": BASE_FOLDER}
        else:
            src = Path(link_base).resolve()
            read_meta(src)
            base_entry = {"path": str(src), "sha256": _base_checksums(src)}
        providers = []
        for name, provider in stack.providers.items():
            save = getattr(provider, "save_pretrained", None)
            if save is None:
                raise ArtifactError(
                    f"provider {name!r} ({type(provider).__name__}) cannot be saved: it has no "
                    "save_pretrained; give it one, or detach it before saving the stack"
                )
            if provider.kind == "exits":
                save(tmp / name, stack.base.config)
            else:
                save(tmp / name)
            providers.append({"name": name, "kind": provider.kind, "folder": name})
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "config": stack.base.config.to_dict(),
            "base": base_entry,
            "providers": providers,
            "default_setting": encode_setting(stack.default_setting),
            "settings": {k: encode_setting(v) for k, v in stack.settings().items()},
            **_carried(base_meta),
            **(extra or {}),
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))

    return write_folder_atomically(folder, write)


def _carried(meta: dict[str, Any] | None) -> dict[str, Any]:
    return {k: meta[k] for k in CARRIED_META if meta and k in meta}


def is_stack_folder(folder: str | os.PathLike) -> bool:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("kind") == KIND
    except (json.JSONDecodeError, AttributeError):
        return False


def load_stack(folder: str | os.PathLike) -> Stack:
    """Load a stack folder; outputs equal the saved stack's at every setting.

    ArtifactError names the part that is missing, changed or does not fit."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta.get("kind") != KIND:
        raise ArtifactError(
            f"{folder / CONFIG_NAME} has kind {meta.get('kind')!r}, not 'stack': load it with "
            "gearshift.load(path)"
        )
    entry = meta.get("base") or {}
    if "folder" in entry:
        base_dir = folder / entry["folder"]
    elif "path" in entry:
        base_dir = Path(entry["path"])
        if not base_dir.is_dir():
            raise ArtifactError(
                f"stack {folder} names its base model {base_dir}, which does not exist: put the "
                "base back there, or rebuild the stack with the base embedded (no --link-base)"
            )
        changed = [
            name
            for name, digest in (entry.get("sha256") or {}).items()
            if not (base_dir / name).is_file() or file_sha256(base_dir / name) != digest
        ]
        if changed:
            raise ArtifactError(
                f"stack {folder}: the base model {base_dir} changed since the stack was built "
                f"({', '.join(changed)} differ from the recorded SHA-256): its adapters were "
                "made for the old weights; rebuild the stack on the new base"
            )
    else:
        raise ArtifactError(f"{folder / CONFIG_NAME} names no base model ('base' entry missing)")
    base = load_model(base_dir)
    if not isinstance(base, Transformer):
        raise ArtifactError(f"stack {folder}: its base {base_dir} is not a plain model folder")
    kinds = provider_kinds()
    stack = Stack(base)
    for p in meta.get("providers", []):
        loader = kinds.get(p.get("kind"))
        if loader is None:
            raise ArtifactError(
                f"stack {folder}: provider {p.get('name')!r} has kind {p.get('kind')!r}, which "
                f"this gearshift does not know (known: {', '.join(sorted(kinds))}); upgrade "
                "gearshift"
            )
        stack.attach(loader(folder / p["folder"], base), p["name"])
    stack.default_setting = meta.get("default_setting") or {}
    return stack.eval()
