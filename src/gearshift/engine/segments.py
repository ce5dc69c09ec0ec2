"""Early exit on ONNX Runtime: one graph per layer, the exit decision in Python between them.

A stack whose setting turns exits on decides per row, after each layer, whether the row
leaves the batch; one traced graph cannot hold that. Here layer i is its own graph
(``segment-i.onnx``: the embeddings too for i = 0; the final LayerNorm and the model's head
for the last layer, layer i's exit head otherwise) returning the hidden states and that
layer's logits. Between graphs the stack's own criterion (``Exits.resolve(value).decide``)
picks the rows that leave, exactly as the eager loop does, and only the remaining rows run
on. Only exits may be on (plugins and steps change the layer loop itself).
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gearshift.engine.base import (
    Engine,
    EngineOutput,
    dequantized_copy,
    has_quantized_linear,
    input_names,
    pad_id,
)
from gearshift.engine.onnx import (
    DEFAULT_OPSET,
    example_batch,
    exportable,
    fuse_graph,
    quantize_int8,
    session,
)
from gearshift.errors import ConfigError
from gearshift.runtime.modules import AttentionMask


def exits_only(model: nn.Module, setting: Mapping[str, Any] | None) -> bool:
    """Whether ``setting`` turns exits on (and nothing else) on a stack with exits."""
    setting = dict(setting or {})
    providers = getattr(model, "providers", None)
    if providers is None or "exits" not in providers or setting.get("exits") is None:
        return False
    others = [k for k, v in setting.items() if k != "exits" and v is not None]
    if others:
        raise ConfigError(
            f"early exit runs on ONNX Runtime as per-layer segments only with every other "
            f"provider off, but {others} are on too: run this setting on engine 'eager'"
        )
    return True


class _Segment(nn.Module):
    """Layer ``layer`` of the base (with the embeddings first when ``first``) and the logits
    of its exit (the model's head after the last layer)."""

    def __init__(self, base, exits, layer: int, names: list[str]) -> None:
        super().__init__()
        self.base, self.exits, self.layer, self.names = base, exits, layer, names
        self.first = layer == 0
        self.last = layer == base.config.num_layers - 1

    def forward(self, *inputs: torch.Tensor):
        base = self.base
        if self.first:
            kw = dict(zip(self.names, inputs))
            h = base.embeddings(kw["input_ids"], kw.get("token_type_ids"))
            attention_mask = kw["attention_mask"]
        else:
            h, attention_mask = inputs
        mask = AttentionMask.from_attention_mask(attention_mask, base.config.causal)
        block = base.blocks[base.config.layer_to_block[self.layer]]
        norms = base.norms[self.layer] if base.norms is not None else None
        h, _ = block(h, mask, None, None, norms)
        keep = attention_mask.bool()
        if self.last:
            if base.final_norm is not None:
                h = base.final_norm(h)
            return h, base.head(h, keep)
        return h, self.exits.heads[self.layer](h, keep)


class SegmentedOnnxEngine(Engine):
    """An early-exit stack at one exit setting on ONNX Runtime, one graph per layer;
    returns the logits and each row's ``exit_step`` as the eager stack does."""

    def __init__(
        self,
        stack: nn.Module,
        setting: Mapping[str, Any],
        int8: bool = False,
        threads: int | None = None,
        folder: str | Path | None = None,
        opset: int = DEFAULT_OPSET,
    ) -> None:
        base = stack.base
        if has_quantized_linear(base):  # torch's int8 kernels have no ONNX form (as OnnxEngine)
            base = dequantized_copy(base)
        self.config = base.config
        if base.config.causal:
            raise ConfigError("segmented early exit is built for encoders, not causal models")
        self.names = input_names(stack)
        self.pad_id = pad_id(stack)
        self.int8 = int8
        self.name = "onnx-int8" if int8 else "onnx"
        self.route, self.mode = "gearshift", "segments"
        self.exits = stack.providers["exits"]
        self.criterion = self.exits.resolve(setting["exits"])
        if folder is None:
            folder = tempfile.mkdtemp(prefix="gearshift-segments-")
            self._finalizer = weakref.finalize(self, shutil.rmtree, folder, True)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sessions = [
            self._export(_Segment(base, self.exits, i, self.names).eval(), i, opset, threads)
            for i in range(base.config.num_layers)
        ]

    def _export(self, module: _Segment, i: int, opset: int, threads: int | None):
        path = self.folder / f"segment-{i}.onnx"
        example = example_batch(module.base)
        if module.first:
            args, names = tuple(example), self.names
        else:
            with torch.no_grad():
                h = module.base.embeddings(example[0])
            args, names = (h, example[1]), ["hidden_states", "attention_mask"]
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
        axes |= {"hidden_out": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}
        with warnings.catch_warnings(), torch.no_grad(), exportable():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=names,
                output_names=["hidden_out", "logits"],
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
        fuse_graph(path, self.config)
        if self.int8:
            path = quantize_int8(path, self.folder / f"segment-{i}.int8.onnx")
        return session(path, threads)

    def size_on_disk(self) -> int:
        """Bytes of the graphs this engine runs."""
        suffix = ".int8.onnx" if self.int8 else ".onnx"
        return sum(
            p.stat().st_size
            for p in self.folder.glob("segment-*.onnx")
            if p.name.endswith(suffix) and (self.int8 or not p.name.endswith(".int8.onnx"))
        )

    @staticmethod
    def _feed(sess, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {i.name: values[i.name] for i in sess.get_inputs()}

    def run(self, inputs: list[torch.Tensor]) -> EngineOutput:
        B = inputs[0].shape[0]
        L = len(self.sessions)
        crit = self.criterion
        state = crit.start(B, torch.device("cpu"))
        rows = torch.arange(B)
        exit_step = torch.full((B,), L - 1, dtype=torch.long)
        values = {n: t.numpy().astype(np.int64) for n, t in zip(self.names, inputs)}
        mask = values["attention_mask"]
        out = None
        h = None
        for layer, sess in enumerate(self.sessions):
            if layer == 0:
                h, logits = sess.run(None, self._feed(sess, values))
            else:
                feed = {"hidden_states": h, "attention_mask": mask}
                h, logits = sess.run(None, self._feed(sess, feed))
            lg = torch.from_numpy(logits)
            if out is None:
                out = lg.new_zeros((B, *lg.shape[1:]))
            if layer == L - 1:
                out[rows] = lg
                break
            leave = crit.decide(layer, lg, rows, state)
            if bool(leave.any()):
                out[rows[leave]] = lg[leave]
                exit_step[rows[leave]] = layer
                stay = (~leave).nonzero().squeeze(1)
                rows = rows[stay]
                idx = stay.numpy()
                h, mask = h[idx], mask[idx]
                if rows.numel() == 0:
                    break
        return EngineOutput(logits=out, exit_step=exit_step)
