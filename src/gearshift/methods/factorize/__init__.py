"""Offline compression: SVD family and the autoencoder framework, per layer or grouped.

    from gearshift.methods.factorize import FactorizeConfig, calibration_batches, compress

    batches = calibration_batches(tokenizer, "task", task="sst2")     # 256 examples
    model, report = compress(model, FactorizeConfig(method="svdllm", ratio=4), batches)
    print(report.summary())
    save_factorized(model, "runs/sst2-svdllm-4", tokenizer=tokenizer)
    again = load_factorized("runs/sst2-svdllm-4")

See docs/factorize.md for how each method works and how storage and FLOPs are counted.
"""

from gearshift.methods.factorize.budget import (
    autoencoder_stored,
    code_size,
    low_rank_size,
    low_rank_stored,
)
from gearshift.methods.factorize.calibration import (
    CalibrationStats,
    calibration_batches,
    collect_statistics,
)
from gearshift.methods.factorize.compress import CompressionReport, calibrate, compress
from gearshift.methods.factorize.config import METHODS, MODULE_TYPES, FactorizeConfig
from gearshift.methods.factorize.model import (
    densify,
    is_factorized_folder,
    load_factorized,
    save_factorized,
)
from gearshift.methods.factorize.modules import (
    DecodedEmbedding,
    DecodedLinear,
    LowRankEmbedding,
    LowRankLinear,
    RowDecoder,
    RowEncoder,
)
from gearshift.methods.factorize.svd import Whitening, low_rank_factors, whitening_from_gram

__all__ = [
    "METHODS",
    "MODULE_TYPES",
    "CalibrationStats",
    "CompressionReport",
    "DecodedEmbedding",
    "DecodedLinear",
    "FactorizeConfig",
    "LowRankEmbedding",
    "LowRankLinear",
    "RowDecoder",
    "RowEncoder",
    "Whitening",
    "autoencoder_stored",
    "calibrate",
    "calibration_batches",
    "code_size",
    "collect_statistics",
    "compress",
    "densify",
    "is_factorized_folder",
    "load_factorized",
    "low_rank_factors",
    "low_rank_size",
    "low_rank_stored",
    "save_factorized",
    "whitening_from_gram",
]
