"""How int8 attaches to a model: a model edit, done by :func:`gearshift.runtime.quantize_int8`.

The edited model is a plain :class:`~gearshift.runtime.Transformer` whose config records
each int8 Linear (``ModelConfig.forms``); it saves and loads with ``runtime.save_model`` /
``runtime.load_model``, the int8 values, scales and zero points stored in model.safetensors.
"""

from __future__ import annotations

from torch import nn

from gearshift.methods.quantize.config import QuantizeConfig
from gearshift.runtime.edits import quantize_int8


def quantize(model: nn.Module, config: QuantizeConfig | None = None) -> nn.Module:
    """Quantize ``model``'s Linears to int8 as ``config`` says (in place); returns ``model``."""
    config = config or QuantizeConfig()
    config.validate()
    return quantize_int8(model, config.modules, config.qscheme)
