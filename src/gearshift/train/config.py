"""Settings of the training loop: :class:`TrainConfig`."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gearshift.errors import ConfigError

logger = logging.getLogger(__name__)

LR_SCHEDULES = ("linear", "constant", "cosine")
MIXED_PRECISION = ("no", "fp16", "bf16", "fp8")

# Fields whose change between a checkpoint and the run resuming from it would change the
# trained weights; resuming with a different value is refused (ConfigError names the field).
RESULT_FIELDS = (
    "learning_rate",
    "weight_decay",
    "epochs",
    "max_steps",
    "batch_size",
    "grad_accum_steps",
    "warmup_ratio",
    "lr_schedule",
    "max_grad_norm",
    "seed",
    "shuffle",
    "group_by_length",
    "mixed_precision",
    "metric_for_best",
    "greater_is_better",
)


@dataclass
class TrainConfig:
    """Everything the training loop needs besides the model, the data and the loss.

    Steps are optimizer steps (one step = ``grad_accum_steps`` batches).
    """

    output_dir: str = field(
        metadata={"help": "Folder for log.jsonl, the resumable checkpoint/ and the best/ model."}
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate of AdamW."})
    weight_decay: float = field(
        default=0.01,
        metadata={"help": "AdamW weight decay (not applied to biases and norm weights, ndim < 2)."},
    )
    epochs: float = field(
        default=3.0,
        metadata={
            "help": "Passes over the training data (fractions allowed); unused if max_steps > 0."
        },
    )
    max_steps: int = field(
        default=0, metadata={"help": "Total optimizer steps; 0 = derive from epochs."}
    )
    batch_size: int = field(
        default=32, metadata={"help": "Examples per batch on each process (before accumulation)."}
    )
    grad_accum_steps: int = field(
        default=1,
        metadata={"help": "Batches whose gradients are summed before each optimizer step."},
    )
    warmup_ratio: float = field(
        default=0.0,
        metadata={"help": "Fraction of the total steps spent warming the learning rate up from 0."},
    )
    lr_schedule: str = field(
        default="linear",
        metadata={"help": "Learning-rate schedule after warmup: linear, constant or cosine."},
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "Clip the gradient norm to this value; 0 = no clipping."}
    )
    seed: int = field(
        default=42, metadata={"help": "Seed of the model RNG and of the per-epoch data order."}
    )
    shuffle: bool = field(
        default=True,
        metadata={"help": "Shuffle the training data each epoch (order fixed by seed and epoch)."},
    )
    eval_every: int = field(
        default=0,
        metadata={"help": "Run eval_fn every this many steps; 0 = at the end of each epoch."},
    )
    save_every: int = field(
        default=500,
        metadata={
            "help": "Write the resumable checkpoint every this many steps (also at each epoch "
            "end and at the end of training); 0 = only at epoch ends."
        },
    )
    metric_for_best: str | None = field(
        default=None,
        metadata={
            "help": "Name of the eval_fn metric that decides the best model; None = no best."
        },
    )
    greater_is_better: bool = field(
        default=True, metadata={"help": "Whether a larger metric_for_best is better."}
    )
    keep_best: bool = field(
        default=True,
        metadata={"help": "Save the best model (by metric_for_best) to <output_dir>/best/."},
    )
    log_every: int = field(
        default=10,
        metadata={"help": "Write a training log line (mean loss, lr) every this many steps."},
    )
    mixed_precision: str = field(
        default="no", metadata={"help": "Accelerate mixed precision: no, fp16, bf16 or fp8."}
    )
    group_by_length: bool = field(
        default=False,
        metadata={
            "help": "Batch examples of similar length together (less padding, same data per "
            "epoch): random chunks of 50 batches are sorted by length, batches are shuffled."
        },
    )
    num_workers: int = field(
        default=0,
        metadata={
            "help": "DataLoader worker processes (only when a dataset, not a loader, is given)."
        },
    )
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})
    keep_optimizer: bool = field(
        default=False,
        metadata={
            "help": "Keep the optimizer state in <output_dir>/checkpoint/ once training "
            "finishes (by default it is deleted then: it is only needed to continue an "
            "unfinished run, and is about three times the model's size)."
        },
    )

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""
        if not str(self.output_dir):
            raise ConfigError("output_dir is empty: give the folder the run should write to")
        self.output_dir = str(self.output_dir)

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r} is invalid: {why}")

        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise bad("learning_rate", "must be a positive number")
        if not self.weight_decay >= 0:
            raise bad("weight_decay", "must be >= 0")
        if self.max_steps < 0:
            raise bad("max_steps", "must be >= 0 (0 = use epochs)")
        if self.max_steps == 0 and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise bad("epochs", "must be > 0 when max_steps is 0")
        if self.batch_size < 1:
            raise bad("batch_size", "must be >= 1")
        if self.grad_accum_steps < 1:
            raise bad("grad_accum_steps", "must be >= 1")
        if not 0 <= self.warmup_ratio <= 1:
            raise bad("warmup_ratio", "must be between 0 and 1")
        if self.lr_schedule not in LR_SCHEDULES:
            raise bad("lr_schedule", f"choose one of {', '.join(LR_SCHEDULES)}")
        if not self.max_grad_norm >= 0:
            raise bad("max_grad_norm", "must be >= 0 (0 = no clipping)")
        for name in ("eval_every", "save_every", "num_workers"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.log_every < 1:
            raise bad("log_every", "must be >= 1")
        if self.mixed_precision not in MIXED_PRECISION:
            raise bad("mixed_precision", f"choose one of {', '.join(MIXED_PRECISION)}")

    # --------------------------------------------------------------- round trip
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys are dropped with a warning."""
        if not isinstance(data, dict):
            raise ConfigError(f"a training config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("ignoring unknown training config keys: %s", ", ".join(unknown))
        if "output_dir" not in data:
            raise ConfigError("the training config has no output_dir")
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"the training config is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config file {path} does not exist")
        return cls.from_json(path.read_text(encoding="utf-8"))

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text (for building CLIs)."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def result_differences(old: dict[str, Any], new: TrainConfig) -> list[tuple[str, Any, Any]]:
    """The result-changing fields whose value differs: (name, old, new)."""
    out = []
    cur = new.to_dict()
    for name in RESULT_FIELDS:
        if name in old and old[name] != cur[name]:
            out.append((name, old[name], cur[name]))
    return out
