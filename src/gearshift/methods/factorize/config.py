"""Settings of offline compression: :class:`FactorizeConfig`, saved as JSON in gearshift.json."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from gearshift.errors import ConfigError

logger = logging.getLogger("gearshift.factorize")

METHODS = ("svd", "fwsvd", "svdllm", "ae", "ae-act")
LOW_RANK_METHODS = ("svd", "fwsvd", "svdllm")
AUTOENCODER_METHODS = ("ae", "ae-act")

# The weight matrices a method can compress, named by where they sit in the runtime's
# Transformer: ``blocks[i].attn.q`` ... ``blocks[i].ffn.out``, and the word embedding.
LINEAR_TYPES = ("attn.q", "attn.k", "attn.v", "attn.o", "ffn.inp", "ffn.out")
EMBEDDING_TYPE = "embeddings.word"
MODULE_TYPES = (*LINEAR_TYPES, EMBEDDING_TYPE)


@dataclass
class FactorizeConfig:
    """What to compress, with which method, to which size; every field has help text."""

    method: str = field(
        default="svdllm",
        metadata={
            "help": "svd (truncated SVD), fwsvd (Fisher-weighted SVD), svdllm (SVD whitened by "
            "the calibration inputs), ae (the paper's row-wise autoencoder), ae-act (autoencoder "
            "trained on the output error under the calibration activations)."
        },
    )
    ratio: float = field(
        default=4.0,
        metadata={
            "help": "Target compression ratio of the compressed modules: their original weight "
            "count over the parameters stored in their place (biases stay exact, not counted)."
        },
    )
    modules: list[str] = field(
        default_factory=lambda: list(MODULE_TYPES),
        metadata={"help": f"Module types to compress, from {', '.join(MODULE_TYPES)}."},
    )
    layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "Parameter blocks whose Linears are compressed (block indices; a block shared "
            "by several layers is compressed once); None = all."
        },
    )
    module_ratios: dict[str, float] = field(
        default_factory=dict,
        metadata={"help": "Per module type ratio overriding `ratio`, e.g. {'ffn.out': 2.0}."},
    )
    grouped: bool = field(
        default=False,
        metadata={
            "help": "Compress one module type jointly across layers: a basis shared by the "
            "group's layers (SVD family, Basis Sharing) or a decoder shared by them (autoencoder)."
        },
    )
    group_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module types compressed jointly when grouped (None = every compressed "
            "Linear type); the others are compressed per layer."
        },
    )
    group_size: int = field(
        default=0,
        metadata={
            "help": "Consecutive blocks per group when grouped; 0 = all compressed blocks in one "
            "group. Blocks of a different shape (pruned widths) form their own groups."
        },
    )
    # ---------------------------------------------------------------- calibration
    whitening_damping: float = field(
        default=1e-6,
        metadata={
            "help": "svdllm/ae-act: when X^T X is not positive definite, the first damping tried, "
            "as a fraction of its mean diagonal (then x100 up to 1e-2, then eigendecomposition)."
        },
    )
    row_importance_floor: float = field(
        default=0.1,
        metadata={
            "help": "Row importances (Fisher, token counts) are divided by their mean and raised "
            "to at least this floor, so rows the calibration never touched still count."
        },
    )
    # ---------------------------------------------------------------- autoencoder
    ae_steps: int = field(
        default=1000, metadata={"help": "Autoencoder training steps (Adam) per matrix or group."}
    )
    ae_batch_rows: int = field(
        default=256, metadata={"help": "Weight rows per autoencoder training step."}
    )
    ae_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (paper: 1e-3)."})
    ae_lr_schedule: str = field(
        default="cosine",
        metadata={"help": "constant (paper) or cosine (decay to 0 over ae_steps)."},
    )
    ae_cos_weight: float = field(
        default=0.909, metadata={"help": "Weight of mean(1 - cos(w_hat, w)) in the loss."}
    )
    ae_rmse_weight: float = field(
        default=0.091, metadata={"help": "Weight of the RMSE of w_hat - w in the loss."}
    )
    ae_refine_steps: int = field(
        default=0,
        metadata={
            "help": "After training, optimise the stored codes (and the decoder) directly for "
            "this many more steps, the encoder set aside; 0 = codes are the encoder's outputs "
            "(the paper)."
        },
    )
    ae_decoder_widths: list[int] = field(
        default_factory=lambda: [2, 4],
        metadata={
            "help": "Hidden widths of the decoder as multiples of the code size "
            "(paper: d -> 2d -> 4d -> m)."
        },
    )
    ae_negative_slope: float = field(
        default=0.01, metadata={"help": "LeakyReLU negative slope in encoder and decoder."}
    )
    ae_fisher: bool = field(
        default=False,
        metadata={"help": "Weight each row's loss by its Fisher importance (needs labels)."},
    )
    ae_transpose: str = field(
        default="never",
        metadata={
            "help": "never: rows are the weight's rows as stored (out x in, the paper); auto: "
            "use the transpose when its rows are shorter (a smaller decoder, more samples)."
        },
    )
    ae_act_mix: float = field(
        default=0.9,
        metadata={
            "help": "ae-act: loss = mix * relative output error + (1 - mix) * the paper's loss."
        },
    )
    threads: int | None = field(
        default=1,
        metadata={
            "help": "torch threads while factorizing and training autoencoders (calibration "
            "keeps the current setting); None = leave as is. 1 by default: these small LAPACK "
            "and MLP calls gain little from threads, and on a busy machine competing threads "
            "made them tens of times slower."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the autoencoders' init and batches."})
    progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field and the fix."""
        if self.method not in METHODS:
            raise ConfigError(f"method {self.method!r} unknown; choose one of {', '.join(METHODS)}")
        if not self.ratio > 1.0:
            raise ConfigError(f"ratio={self.ratio} must be > 1 (stored size = original / ratio)")
        unknown = [m for m in self.modules if m not in MODULE_TYPES]
        if unknown or not self.modules:
            raise ConfigError(
                f"modules {unknown or '[]'} invalid; choose from {', '.join(MODULE_TYPES)}"
            )
        bad_keys = [k for k in self.module_ratios if k not in MODULE_TYPES]
        if bad_keys:
            raise ConfigError(
                f"module_ratios keys {bad_keys} unknown; use module types {', '.join(MODULE_TYPES)}"
            )
        bad_ratios = {k: v for k, v in self.module_ratios.items() if not v > 1.0}
        if bad_ratios:
            raise ConfigError(f"module_ratios {bad_ratios}: every ratio must be > 1")
        if self.group_modules is not None:
            wrong = [m for m in self.group_modules if m not in LINEAR_TYPES]
            if wrong:
                raise ConfigError(
                    f"group_modules {wrong} invalid: only Linear types group across layers "
                    f"({', '.join(LINEAR_TYPES)})"
                )
        if self.layers is not None and any(i < 0 for i in self.layers):
            raise ConfigError(f"layers {self.layers} must be non-negative block indices")
        if self.group_size < 0:
            raise ConfigError(f"group_size={self.group_size} must be >= 0 (0 = one group)")
        if not self.whitening_damping > 0:
            raise ConfigError("whitening_damping must be > 0")
        if not self.row_importance_floor >= 0:
            raise ConfigError("row_importance_floor must be >= 0")
        if self.ae_steps < 1 or self.ae_batch_rows < 1:
            raise ConfigError("ae_steps and ae_batch_rows must be >= 1")
        if self.ae_refine_steps < 0:
            raise ConfigError("ae_refine_steps must be >= 0")
        if not self.ae_lr > 0:
            raise ConfigError("ae_lr must be > 0")
        if self.ae_lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"ae_lr_schedule={self.ae_lr_schedule!r}: use constant or cosine")
        if not self.ae_decoder_widths or any(w < 1 for w in self.ae_decoder_widths):
            raise ConfigError(f"ae_decoder_widths={self.ae_decoder_widths}: positive multiples")
        if self.ae_transpose not in ("never", "auto"):
            raise ConfigError(f"ae_transpose={self.ae_transpose!r}: use never or auto")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads={self.threads} must be >= 1 (or None)")
        if not 0.0 <= self.ae_act_mix <= 1.0:
            raise ConfigError(f"ae_act_mix={self.ae_act_mix} must be between 0 and 1")

    def ratio_for(self, module_type: str) -> float:
        """The target ratio of one module type (``module_ratios`` or ``ratio``)."""
        return float(self.module_ratios.get(module_type, self.ratio))

    # ------------------------------------------------------------------ calibration needs
    @property
    def needs_gram(self) -> bool:
        """Whether the method reads the calibration inputs' X^T X (and token counts)."""
        return self.method in ("svdllm", "ae-act")

    @property
    def needs_fisher(self) -> bool:
        """Whether the method reads squared gradients of the task loss."""
        return self.method == "fwsvd" or (self.method in AUTOENCODER_METHODS and self.ae_fisher)

    # ------------------------------------------------------------------ round trip
    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-compatible dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FactorizeConfig:
        """Build from a dict; unknown keys are dropped with a warning (old files still load)."""
        if not isinstance(data, dict):
            raise ConfigError(
                f"a factorize config must be a JSON object, got {type(data).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("ignoring unknown factorize config keys: %s", ", ".join(unknown))
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FactorizeConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"factorize config is not valid JSON (line {exc.lineno}): {exc.msg}"
            ) from exc
        return cls.from_dict(data)


def field_help(name: str) -> str:
    """The help text of one :class:`FactorizeConfig` field (for the CLI)."""
    for f in dataclasses.fields(FactorizeConfig):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)
