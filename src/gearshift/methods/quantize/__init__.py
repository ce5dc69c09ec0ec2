"""int8 dynamic quantization of Linear layers (torch's), as a model edit.

    from gearshift.methods.quantize import QuantizeConfig, quantize

    model = quantize(model, QuantizeConfig(qscheme="per-channel"))   # CPU, float32 model
    save_model(model, "runs/sst2-int8")                                # int8 in safetensors
    again = load_model("runs/sst2-int8")                               # bitwise equal logits

It composes with the other model edits: quantize last (after slim and factorize); on a
factorized model the low-rank factors' Linears become int8. See docs/compose.md.
"""

from gearshift.methods.quantize.config import QuantizeConfig
from gearshift.methods.quantize.model import quantize
from gearshift.runtime.edits import quantize_int8
from gearshift.runtime.quant import Int8Linear

__all__ = ["Int8Linear", "QuantizeConfig", "quantize", "quantize_int8"]
