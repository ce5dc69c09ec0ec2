"""gearshift's own transformer runtime."""

from gearshift.runtime.config import BlockShape, HeadConfig, ModelConfig
from gearshift.runtime.edits import quantize_int8
from gearshift.runtime.io import load_hf, load_model, load_pretrained, load_tokenizer, save_model
from gearshift.runtime.model import Transformer, TransformerOutput
from gearshift.runtime.plan import ForwardPlan, Step, euler_update

__all__ = [
    "BlockShape",
    "ForwardPlan",
    "HeadConfig",
    "ModelConfig",
    "Step",
    "Transformer",
    "TransformerOutput",
    "euler_update",
    "load_hf",
    "load_model",
    "load_pretrained",
    "load_tokenizer",
    "quantize_int8",
    "save_model",
]
