"""What a slim model is made of: the pipeline's :class:`SlimConfig` and the exits'
:class:`ExitConfig` (both dataclasses saved as JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from gearshift.errors import ConfigError

from .prune import Widths, widths_for_ratio

POOLERS = ("tanh", "dense")
POOLS = ("first", "mean")


@dataclass
class ExitConfig:
    """The exits' shape: ``pooler`` "tanh" (the paper) or "dense" (Linear + tanh first);
    ``pool``: the vector an exit reads, "first" (the first token's state, the paper) or
    "mean" (the mean of the real tokens' states). Mean pooling exists because a model
    pre-trained with mean pooling (all-MiniLM-L6-v2) carries nothing in its shallow layers'
    first token: see docs/slim.md."""

    pooler: str = "tanh"
    dropout: float = 0.1
    pool: str = "first"

    def validate(self) -> None:
        if self.pooler not in POOLERS:
            raise ConfigError(f"exit pooler {self.pooler!r} unknown: use one of {POOLERS}")
        if self.pool not in POOLS:
            raise ConfigError(f"exit pool {self.pool!r} unknown: use one of {POOLS}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"exit dropout {self.dropout} must be in [0, 1)")


IMPORTANCE = ("all-exits", "last-exit")


@dataclass
class SlimConfig:
    """Everything ``gearshift slim`` needs besides the teacher, the task and the data."""

    heads: int | None = field(default=None, metadata={"help": "heads kept per layer"})
    ffn: int | None = field(default=None, metadata={"help": "FFN neurons kept per layer"})
    word_rank: int | None = field(default=None, metadata={"help": "word embedding rank"})
    target_ratio: float | None = field(
        default=None,
        metadata={"help": "instead of heads/ffn: keep this share of the cost, e.g. 0.125"},
    )
    target_metric: str = field(default="flops", metadata={"help": "flops (at 128) or params"})
    global_ranking: bool = field(
        default=False, metadata={"help": "rank heads/neurons across layers (widths may differ)"}
    )
    importance: str = field(
        default="all-exits",
        metadata={"help": "Taylor scores from all exits' losses (paper) or the last exit's"},
    )
    iterations: int = field(default=4, metadata={"help": "prune steps to reach the target"})
    calibration_batches: int = field(default=16, metadata={"help": "batches per Taylor score"})
    exits: bool = field(default=True, metadata={"help": "False: last exit only (static)"})
    exit_pooler: str = "tanh"
    exit_dropout: float = 0.1
    exit_pool: str = "first"
    gradient_equilibrium: bool = False
    hidden_weight: float = 1.0
    ce_weight: float = 0.0
    temperature: float = 1.0
    ta_steps: int = field(default=600, metadata={"help": "steps distilling the assistant"})
    steps_per_iteration: int = field(default=300, metadata={"help": "distillation per prune step"})
    recovery_steps: int = field(default=600, metadata={"help": "final recovery distillation"})
    batch_size: int = 32
    learning_rate: float = 5e-5
    exit_learning_rate: float = 1e-3
    seed: int = 42
    keep_optimizer: bool = field(
        default=False,
        metadata={"help": "keep each finished stage's optimizer state (deleted by default)"},
    )

    def validate(self) -> None:
        if self.target_ratio is None and (self.heads is None or self.ffn is None):
            raise ConfigError("give the target widths (heads and ffn) or a target_ratio")
        if self.target_ratio is not None and not 0 < self.target_ratio <= 1:
            raise ConfigError(f"target_ratio {self.target_ratio} must be in (0, 1]")
        if self.importance not in IMPORTANCE:
            raise ConfigError(f"importance {self.importance!r}: use one of {IMPORTANCE}")
        if self.target_metric not in ("flops", "params"):
            raise ConfigError(f"target_metric {self.target_metric!r}: use flops or params")
        if self.iterations < 1:
            raise ConfigError("iterations must be >= 1")

    def target(self, config) -> Widths:
        if self.target_ratio is not None:
            return widths_for_ratio(config, self.target_ratio, self.target_metric, self.word_rank)
        return Widths(self.heads, self.ffn, self.word_rank)

    @classmethod
    def from_dict(cls, d: dict) -> SlimConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
