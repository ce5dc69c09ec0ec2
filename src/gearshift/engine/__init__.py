"""Optimised engines for gearshift models and stacks: ONNX Runtime (fp32, int8) and torch.compile.

::

    from gearshift import engine

    run = engine.build(model, "onnx-int8", threads=1)
    logits = run(**batch).logits

Every engine is a callable with the model's inputs returning ``.logits``, so
``gearshift.jobs.evaluate(run, data)`` and the latency tools take it as they take a model.
See docs/engine.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from gearshift.engine.base import EngineOutput, dequantized_copy, input_names
from gearshift.errors import ConfigError

ENGINES = ("eager", "compiled", "onnx", "onnx-int8")


def build(
    model: nn.Module,
    engine: str = "eager",
    *,
    threads: int | None = None,
    setting: Mapping[str, Any] | None = None,
    folder: str | Path | None = None,
):
    """Return ``model`` (at ``setting``, for a stack) running on ``engine``.

    ``engine``: "eager" (the runtime as is), "compiled" (torch.compile), "onnx" (ONNX
    Runtime fp32), "onnx-int8" (ONNX Runtime dynamic int8 of the exported graph).
    ``threads`` fixes the intra-op threads (ORT session option / torch threads).
    ``folder`` keeps the ONNX graphs (default: a temporary folder). The returned callable
    takes ``input_ids, attention_mask=None, token_type_ids=None`` and returns an
    :class:`EngineOutput`. A stack with exits on (and nothing else) runs on the onnx
    engines as one graph per layer with the exit decision between them
    (:mod:`gearshift.engine.segments`); compiled runs it with graph breaks.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if engine == "eager":
        from gearshift.engine.compiled import EagerEngine

        return EagerEngine(model, threads, setting)
    if engine == "compiled":
        from gearshift.engine.compiled import CompiledEngine

        return CompiledEngine(model, threads, setting)
    from gearshift.engine.segments import SegmentedOnnxEngine, exits_only

    if exits_only(model, setting):
        return SegmentedOnnxEngine(
            model, setting, int8=engine == "onnx-int8", threads=threads, folder=folder
        )
    from gearshift.engine.onnx import OnnxEngine

    return OnnxEngine(
        model, int8=engine == "onnx-int8", threads=threads, setting=setting, folder=folder
    )


__all__ = ["ENGINES", "EngineOutput", "build", "dequantized_copy", "input_names"]
