"""What every engine shares: the inputs a model reads, its output, and the wrapped forward.

An engine is a callable ``engine(input_ids, attention_mask=None, token_type_ids=None)`` that
returns an :class:`EngineOutput` (``.logits``), so code written for a model
(``model(**batch).logits``, :func:`gearshift.jobs.evaluate`) runs on any engine unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gearshift.errors import ConfigError

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class EngineOutput:
    """What an engine returns: the task head's logits (B, C), (B,) or (B, n, C)."""

    logits: torch.Tensor
    exit_step: torch.Tensor | None = None


def model_config(model: nn.Module):
    """The ModelConfig of a runtime model or of a wrapper that holds one (``.config``)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "family"):
        raise ConfigError(
            f"{type(model).__name__} has no gearshift ModelConfig (.config): an engine runs "
            "gearshift models (gearshift.load / runtime.load_pretrained) and stacks"
        )
    return config


def input_names(model: nn.Module) -> list[str]:
    """The inputs the model reads: input_ids, attention_mask, and token_type_ids where the
    family has token types (BERT, ALBERT)."""
    config = model_config(model)
    names = ["input_ids", "attention_mask"]
    if config.type_vocab_size > 1:  # one token type (RoBERTa) is always type 0
        names.append("token_type_ids")
    return names


def pad_id(model: nn.Module) -> int:
    """The id padding positions get (the model's pad token, else 0)."""
    pid = model_config(model).pad_token_id
    return 0 if pid is None else int(pid)


@contextmanager
def applied(model: nn.Module, setting: Mapping[str, Any] | None) -> Iterator[None]:
    """Run the block with ``setting`` in force on a stack (``stack.using(**setting)``)."""
    if not setting:
        with nullcontext():
            yield
        return
    using = getattr(model, "using", None)
    if using is None:
        raise ConfigError(
            f"setting {dict(setting)} was given but {type(model).__name__} has no operating "
            "points (.using): pass setting only with a compose Stack"
        )
    with using(**setting):
        yield


def _int8_types() -> tuple[type, ...]:
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    types: tuple[type, ...] = (QLinear,)
    try:
        from gearshift.runtime.quant import Int8Linear

        types += (Int8Linear,)
    except ImportError:  # pragma: no cover - older runtime
        pass
    return types


def has_quantized_linear(model: nn.Module) -> bool:
    """True when ``model`` holds int8 Linears (gearshift's Int8Linear or torch's dynamic
    quantized Linear)."""
    types = _int8_types()
    return any(isinstance(m, types) for m in model.modules())


def dequantized_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every int8 Linear replaced by the fp32 ``nn.Linear``
    holding its dequantized weight: the same function as an exportable graph (torch's
    quantized kernels have no ONNX form; ONNX Runtime quantizes that graph instead)."""
    types = _int8_types()
    out = copy.deepcopy(model)
    for name, m in list(out.named_modules()):
        if not isinstance(m, types):
            continue
        w = m.weight() if callable(m.weight) else m.weight
        b = m.bias() if callable(m.bias) else m.bias
        w = w.dequantize() if w.is_quantized else w
        dense = nn.Linear(m.in_features, m.out_features, bias=b is not None)
        with torch.no_grad():
            dense.weight.copy_(w)
            if b is not None:
                dense.bias.copy_(b)
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, dense)
    return out.eval()


class LogitsModule(nn.Module):
    """``forward(input_ids, attention_mask[, token_type_ids]) -> logits`` of a model at one
    setting: the positional form exporters and compilers take."""

    def __init__(
        self, model: nn.Module, names: list[str], setting: Mapping[str, Any] | None = None
    ):
        super().__init__()
        self.model = model
        self.names = list(names)
        self.setting = dict(setting or {})

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        kwargs = dict(zip(self.names, inputs))
        with applied(self.model, self.setting):
            out = self.model(**kwargs)
        return out.logits


class Engine:
    """Base of the engines: ``engine(input_ids, attention_mask=None, token_type_ids=None)``
    fills in the defaults a model would use and calls :meth:`run` on the inputs in
    ``self.names`` order, which returns an :class:`EngineOutput`."""

    name = "engine"
    names: list[str]

    def run(self, inputs: list[torch.Tensor]) -> EngineOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **unused: Any,
    ) -> EngineOutput:
        return self.run(batch_inputs(self.names, input_ids, attention_mask, token_type_ids))

    def eval(self) -> Engine:
        """Engines run in inference mode only; kept so ``model.eval()`` callers work."""
        return self

    def parameters(self) -> Iterator[torch.Tensor]:
        """No torch parameters to move: an engine takes CPU tensors."""
        return iter(())


def batch_inputs(
    names: list[str], input_ids: torch.Tensor, attention_mask, token_type_ids
) -> list[torch.Tensor]:
    """The model's inputs in ``names`` order, with the defaults a model would use: every
    token real, token type 0."""
    out = []
    for name in names:
        if name == "input_ids":
            out.append(input_ids)
        elif name == "attention_mask":
            out.append(
                torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
            )
        else:
            out.append(torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
    return out
