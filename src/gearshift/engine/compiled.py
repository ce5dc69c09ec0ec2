"""The eager runtime and its ``torch.compile`` form, behind the engine interface."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from gearshift.engine.base import (
    Engine,
    EngineOutput,
    LogitsModule,
    applied,
    input_names,
    model_config,
)


class EagerEngine(Engine):
    """The model itself (at ``setting``), under ``torch.inference_mode``: the reference."""

    name = "eager"

    def __init__(
        self,
        model: nn.Module,
        threads: int | None = None,
        setting: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.config = model_config(model)
        self.names = input_names(model)
        self.setting = dict(setting or {})
        self.threads = threads

    def _forward(self, inputs: list[torch.Tensor]):
        with applied(self.model, self.setting):
            return self.model(**dict(zip(self.names, inputs)))

    def run(self, inputs: list[torch.Tensor]) -> EngineOutput:
        with _threads(self.threads), torch.inference_mode():
            out = self._forward(inputs)
        return EngineOutput(logits=out.logits, exit_step=getattr(out, "exit_step", None))


class CompiledEngine(EagerEngine):
    """The model compiled with ``torch.compile`` (inductor, dynamic shapes); the first call
    at a new shape class compiles (seconds), later calls reuse the code.

    Python-level branches on data (padding present or not) become graph breaks or guards,
    so outputs are those of eager.
    """

    name = "compiled"

    def __init__(
        self,
        model: nn.Module,
        threads: int | None = None,
        setting: Mapping[str, Any] | None = None,
        mode: str | None = None,
    ) -> None:
        super().__init__(model, threads, setting)
        self._module = LogitsModule(self.model, self.names, self.setting).eval()
        self._compiled = torch.compile(self._module, dynamic=True, mode=mode)

    def run(self, inputs: list[torch.Tensor]) -> EngineOutput:
        with _threads(self.threads), torch.inference_mode():
            logits = self._compiled(*inputs)
        return EngineOutput(logits=logits)


class _threads:
    """Set torch's intra-op threads for the block (None: leave as is), restoring after."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads

    def __enter__(self):
        self.before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc):
        if self.threads:
            torch.set_num_threads(self.before)
