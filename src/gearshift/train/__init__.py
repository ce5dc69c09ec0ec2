"""The training loop every gearshift method uses (built on Hugging Face Accelerate)."""

from gearshift.atomic import atomic_directory

from .checkpoint import find_checkpoint
from .config import TrainConfig
from .loop import Callback, EarlyStopping, EpochSampler, Trainer, TrainResult
from .losses import hidden_mse, kd_kl, regression_mse, soft_ce

__all__ = [
    "Callback",
    "EarlyStopping",
    "EpochSampler",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "atomic_directory",
    "find_checkpoint",
    "hidden_mse",
    "kd_kl",
    "regression_mse",
    "soft_ce",
]
