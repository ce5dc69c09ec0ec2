"""``gearshift export``: a model or stack as an ONNX folder or a Hugging Face folder.

ONNX folder: ``model.onnx`` (or one ``model-nN.onnx`` per length bucket for graphs fixed to
a length, see :mod:`gearshift.engine.onnx`), the tokenizer, and ``gearshift.json`` with kind
"onnx-export", the source, the opset, the inputs and the graphs. :func:`load_onnx_export`
runs such a folder with ONNX Runtime alone.

HF folder: ``config.json`` + ``model.safetensors`` (+ tokenizer) that
``AutoModelForSequenceClassification.from_pretrained`` loads, checked against gearshift's
logits before it is written.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gearshift.constants import CONFIG_NAME, FORMAT_VERSION
from gearshift.engine.base import (
    Engine,
    EngineOutput,
    has_quantized_linear,
    input_names,
    model_config,
)
from gearshift.engine.onnx import DEFAULT_OPSET, OnnxEngine, example_batch, run_padded, session
from gearshift.errors import ArtifactError, ConfigError
from gearshift.runtime.io import write_folder_atomically

logger = logging.getLogger("gearshift.engine")

HF_ATOL = 1e-5
ONNX_KIND = "onnx-export"


def _save_tokenizer(tokenizer, folder: Path) -> bool:
    if tokenizer is None:
        return False
    tokenizer.save_pretrained(str(folder))
    return True


def export_onnx_folder(
    model: nn.Module,
    output: str | os.PathLike,
    *,
    tokenizer=None,
    setting: Mapping[str, Any] | None = None,
    int8: bool = False,
    opset: int = DEFAULT_OPSET,
    max_length: int = 128,
    source: str | None = None,
) -> Path:
    """Write ``model`` (at ``setting``) as an ONNX folder; returns its path.

    The graph is checked against eager (fp32) before it is written. A graph fixed to one
    length is written once per 16-token bucket up to ``max_length``. A torch int8 model is
    written as ONNX Runtime's int8 of its fp32 equivalent (``int8`` is then implied).
    """
    config = model_config(model)
    from_int8 = has_quantized_linear(model)
    if from_int8:  # torch's int8 kernels have no ONNX form: ORT quantizes the fp32 graph
        int8 = True

    def write(tmp: Path) -> None:
        run = OnnxEngine(model, int8=int8, setting=setting, folder=tmp, opset=opset)
        if run.mode == "dynamic":
            graphs = {"any": run.graph_path().name}
        else:
            for n in range(run.bucket, max_length + 1, run.bucket):
                run._session_for(n)
            graphs = {str(n): run.graph_path(n).name for n in sorted(k for k in run._sessions if k)}
        for p in tmp.glob("*.onnx"):  # keep only the graphs the folder runs
            if p.name not in graphs.values():
                p.unlink()
        has_tok = _save_tokenizer(tokenizer, tmp)
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": ONNX_KIND,
            "source": source or config.source,
            "opset": opset,
            "engine": run.name,
            "inputs": input_names(model),
            "outputs": ["logits"],
            "graphs": graphs,
            "bucket": run.bucket if run.mode == "bucketed" else None,
            "setting": dict(setting or {}),
            "pad_token_id": run.pad_id,
            "head": {"kind": config.head.kind, "label_names": config.head.label_names},
            "tokenizer": has_tok,
            "exporter": f"torch {torch.__version__} torch.onnx.export (TorchScript)",
            "int8": (
                "torch int8 model: its dequantized fp32 graph, quantized by ONNX Runtime"
                if from_int8
                else ("ONNX Runtime dynamic int8" if int8 else None)
            ),
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))

    return write_folder_atomically(output, write)


class OnnxFolder(Engine):
    """An exported ONNX folder run with ONNX Runtime: ``run(input_ids, attention_mask=None,
    token_type_ids=None)`` returns an EngineOutput, like the engine that wrote it."""

    def __init__(self, folder: str | os.PathLike, threads: int | None = None) -> None:
        folder = Path(folder)
        meta_path = folder / CONFIG_NAME
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if meta.get("kind") != ONNX_KIND:
            raise ArtifactError(
                f"{folder} is not an ONNX export (no gearshift.json of kind {ONNX_KIND!r}); "
                "write one with `gearshift export --format onnx`"
            )
        self.meta, self.names, self.name = meta, meta["inputs"], meta["engine"]
        self.sessions = {
            (None if n == "any" else int(n)): session(folder / f, threads)
            for n, f in meta["graphs"].items()
        }

    def run(self, inputs: list[torch.Tensor]) -> EngineOutput:
        n = inputs[0].shape[1]
        if None in self.sessions:
            sess, length = self.sessions[None], n
        else:
            fits = [k for k in sorted(self.sessions) if k >= n]
            if not fits:
                raise ConfigError(
                    f"inputs of {n} tokens are longer than this export's longest graph "
                    f"({max(self.sessions)}); truncate them or export with a larger --max-length"
                )
            length = fits[0]
            sess = self.sessions[length]
        logits = run_padded(sess, self.names, inputs, length, self.meta["pad_token_id"])
        return EngineOutput(logits=logits)


def load_onnx_export(folder: str | os.PathLike, threads: int | None = None) -> OnnxFolder:
    """Run an ONNX folder written by :func:`export_onnx_folder` (ONNX Runtime only)."""
    return OnnxFolder(folder, threads)


def export_hf_folder(model: nn.Module, output: str | os.PathLike, *, tokenizer=None) -> Path:
    """Write ``model`` as a Hugging Face checkpoint folder (config.json, model.safetensors,
    tokenizer); ConfigError says why when the structure has no HF form. The HF model's
    logits are checked against gearshift's (within 1e-5) before anything is written."""
    from gearshift.engine.hf import to_hf

    hf_model = to_hf(model)
    inputs = dict(zip(input_names(model), example_batch(model)))
    with torch.no_grad():
        ref = model(**inputs).logits
        got = hf_model(**inputs).logits.reshape(ref.shape)
    diff = float((got - ref).abs().max())
    if diff > HF_ATOL:
        raise ConfigError(
            f"the Hugging Face model differs from gearshift's by {diff:.2e} (> {HF_ATOL}); "
            "this is a bug in gearshift's HF export, please report it"
        )

    def write(tmp: Path) -> None:
        hf_model.save_pretrained(str(tmp), safe_serialization=True)
        _save_tokenizer(tokenizer, tmp)

    return write_folder_atomically(output, write)
