"""gearshift's resumable checkpoint format and atomic folder writes.

A checkpoint is the folder ``<output_dir>/checkpoint/`` (only the latest is kept)::

    model.safetensors        the model's state_dict (safetensors; shared tensors saved once)
    trainable.safetensors    trained parameters that are not part of the model (if any),
                             keys "param.<i>" in the order of the optimizer's parameters
    optimizer.pt             {"optimizer": ..., "scheduler": ..., "scaler": ...} state dicts,
                             written with torch.save, read with torch.load(weights_only=True);
                             deleted when the run finishes (TrainConfig.keep_optimizer keeps
                             it), trainer_state.json then says "optimizer_dropped": true
    rng_state.safetensors    RNG state of process 0: tensors "torch_cpu", "cuda_<i>", "mps";
                             metadata "python_random" and "numpy" hold JSON
    rng_state_<r>.safetensors  the same for process r > 0 (multi-process runs)
    trainer_state.json       counters, best metric, history, config (written last)

Nothing is unpickled when loading: tensors come from safetensors, the optimizer file is
read with ``weights_only=True`` and everything else is JSON.

Writes are atomic: files go to a temporary sibling folder ``.checkpoint.tmp-*`` that is
renamed into place once complete; ``trainer_state.json`` is written last (itself via a
rename), so a folder holding it is complete. :func:`find_checkpoint` recovers the newest
complete folder if a process died between moving the old checkpoint aside and renaming
the new one in.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model

from gearshift.atomic import write_json_atomic
from gearshift.constants import (
    RNG_STATE_NAME,
    TRAINER_STATE_NAME,
    WEIGHTS_NAME,
)
from gearshift.errors import ArtifactError

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
BEST_DIR = "best"
LOG_NAME = "log.jsonl"
EXTRA_PARAMS_NAME = "trainable.safetensors"
STATE_FORMAT = "gearshift-trainer-state"
STATE_VERSION = 1


# --------------------------------------------------------------------------- crash repair
def recover_directory(final: Path) -> None:
    """Put back ``final`` if a crash left it moved aside (``.<name>.old-*``) by a swap."""
    final = Path(final)
    if final.exists():
        return
    olds = sorted(final.parent.glob(f".{final.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.replace(olds[-1], final)


def clean_output_dir(output_dir: Path) -> None:
    """Repair and tidy ``output_dir`` after a crash: recover moved-aside folders, drop
    partial writes (call with no run writing there)."""
    output_dir = Path(output_dir)
    find_checkpoint(output_dir)
    recover_directory(output_dir / BEST_DIR)
    remove_stale(output_dir, CHECKPOINT_DIR)
    remove_stale(output_dir, BEST_DIR)


def remove_stale(output_dir: Path, name: str = CHECKPOINT_DIR) -> None:
    """Delete leftover ``.<name>.tmp-*`` / ``.<name>.old-*`` folders of crashed writes."""
    for pattern in (f".{name}.tmp-*", f".{name}.old-*"):
        for p in Path(output_dir).glob(pattern):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------- locating / state
def is_complete(path: Path) -> bool:
    return (Path(path) / TRAINER_STATE_NAME).is_file()


def find_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint folder of ``output_dir``, or None.

    When ``checkpoint/`` is missing but a complete ``.checkpoint.*`` sibling survived a
    crash in the middle of :func:`gearshift.atomic.replace_directory`, it is moved into
    place first.
    """
    output_dir = Path(output_dir)
    final = output_dir / CHECKPOINT_DIR
    if is_complete(final):
        return final
    candidates = []
    for p in output_dir.glob(f".{CHECKPOINT_DIR}.*"):
        if p.is_dir() and is_complete(p):
            try:
                step = int(read_trainer_state(p).get("global_step", -1))
            except ArtifactError:
                continue
            candidates.append((step, p))
    if not candidates:
        return None
    _, best = max(candidates, key=lambda c: c[0])
    if final.exists():  # an incomplete folder in the way
        shutil.rmtree(final)
    os.replace(best, final)
    logger.info("recovered the checkpoint of an interrupted save from %s", best.name)
    return final


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """Read and check ``trainer_state.json`` of a checkpoint folder."""
    file = Path(path) / TRAINER_STATE_NAME
    if not file.is_file():
        raise ArtifactError(
            f"{path} is not a gearshift training checkpoint: {TRAINER_STATE_NAME} is missing"
        )
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{file} cannot be read ({exc}); delete the checkpoint folder") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ArtifactError(f"{file} is not a gearshift trainer state")
    if state.get("format_version") != STATE_VERSION:
        raise ArtifactError(
            f"{file} has format version {state.get('format_version')}, this gearshift reads "
            f"{STATE_VERSION}; finish the run with the gearshift that started it or start fresh"
        )
    return state


def write_trainer_state(path: Path, state: dict[str, Any]) -> None:
    state = {"format": STATE_FORMAT, "format_version": STATE_VERSION, **state}
    write_json_atomic(Path(path) / TRAINER_STATE_NAME, state)


# ---------------------------------------------------------------------------- weights
def save_model_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Save ``model``'s state_dict to ``path`` (a file) as safetensors."""
    save_model(model, str(path), force_contiguous=True)


def load_model_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a file written by :func:`save_model_weights` into ``model`` (strict)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        load_model(model, str(path), strict=True, device=str(device))
    except RuntimeError as exc:
        raise ArtifactError(
            f"the weights in {path} do not fit this model (different architecture?): {exc}"
        ) from exc


def default_save_model(model: torch.nn.Module, path: Path) -> None:
    """``model.save_pretrained(path)`` if the model has it, else ``path/model.safetensors``."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(path)
    else:
        save_model_weights(model, Path(path) / WEIGHTS_NAME)


def save_params(params: list[torch.Tensor], path: Path) -> None:
    save_file({f"param.{i}": p.detach().contiguous() for i, p in enumerate(params)}, str(path))


def load_params(params: list[torch.Tensor], path: Path) -> None:
    if not params:
        return
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: the checkpoint has no trainable extra parameters")
    with safe_open(str(path), framework="pt") as fh:
        keys = set(fh.keys())
        if len(keys) != len(params):
            raise ArtifactError(
                f"{path} holds {len(keys)} extra parameters, this run trains {len(params)}"
            )
        with torch.no_grad():
            for i, p in enumerate(params):
                t = fh.get_tensor(f"param.{i}")
                if t.shape != p.shape:
                    raise ArtifactError(
                        f"{path}: extra parameter {i} has shape {tuple(t.shape)}, "
                        f"this run's has {tuple(p.shape)}"
                    )
                p.copy_(t)


# -------------------------------------------------------------------------- optimizer
def save_optimizer(path: Path, state: dict[str, Any]) -> None:
    torch.save(state, str(path))


def load_optimizer(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing from the checkpoint")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types
        raise ArtifactError(f"{path} cannot be read safely: {exc}") from exc


# -------------------------------------------------------------------------------- RNG
def rng_file_name(process_index: int) -> str:
    if process_index == 0:
        return RNG_STATE_NAME
    stem, ext = RNG_STATE_NAME.rsplit(".", 1)
    return f"{stem}_{process_index}.{ext}"


def capture_rng_state(all_cuda_devices: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, json-able dict) describing every RNG the training can draw from."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        if all_cuda_devices:
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"cuda_{i}"] = s
        else:
            i = torch.cuda.current_device()
            tensors[f"cuda_{i}"] = torch.cuda.get_rng_state(i)
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        tensors["mps"] = mps.get_rng_state()
    version, internal, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    meta = {
        "python_random": [version, list(internal), gauss],
        "numpy": [np_kind, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    return tensors, meta


def restore_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = {int(k[5:]): v for k, v in tensors.items() if k.startswith("cuda_")}
    if cuda and torch.cuda.is_available():
        for i, s in cuda.items():
            if i < torch.cuda.device_count():
                torch.cuda.set_rng_state(s, i)
    if "mps" in tensors and torch.backends.mps.is_available():
        torch.mps.set_rng_state(tensors["mps"])
    version, internal, gauss = meta["python_random"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss_np = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss_np))


def save_rng_state(path: Path, all_cuda_devices: bool = True) -> None:
    tensors, meta = capture_rng_state(all_cuda_devices)
    metadata = {
        "format": "gearshift-rng",
        "python_random": json.dumps(meta["python_random"]),
        "numpy": json.dumps(meta["numpy"]),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def load_rng_state(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} is missing from the checkpoint")
    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        md = fh.metadata() or {}
    try:
        meta = {"python_random": json.loads(md["python_random"]), "numpy": json.loads(md["numpy"])}
    except (KeyError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} has no readable python/numpy RNG state") from exc
    if "torch_cpu" not in tensors:
        raise ArtifactError(f"{path} has no torch RNG state")
    return tensors, meta


@contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block without disturbing any RNG (torch CPU/CUDA, python, numpy)."""
    tensors, meta = capture_rng_state(all_cuda_devices=True)
    try:
        yield
    finally:
        restore_rng_state(tensors, meta)
