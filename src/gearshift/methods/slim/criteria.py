"""Exit criteria, online (rows leaving a running batch) and offline (recorded exit logits).

A criterion has ``start(batch_size, device) -> state`` and ``decide(layer, logits, rows,
state) -> leave``: ``logits`` are the exit's outputs for the rows still running (``rows``:
their indices in the original batch), ``leave`` a bool mask over them. The same code runs in
:class:`~gearshift.methods.slim.MultiExitModel` (batched early exit) and in
:func:`simulate` (every exit's logits recorded once, replayed for each threshold), so a
threshold sweep needs one pass over the dev set.

- :class:`Entropy`: leave when the prediction's entropy is below a threshold (DeeBERT,
  COST-EFF); one threshold, or one per layer (a schedule).
- :class:`Patience`: leave when ``patience`` consecutive exits agree (PABEE): the same class
  for classification, predictions within ``tolerance`` for regression.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gearshift.errors import ConfigError


class Criterion:
    """Base class: never exits early."""

    name = "none"

    def start(self, batch_size: int, device: torch.device) -> dict[str, Any]:
        return {}

    def decide(
        self, layer: int, logits: torch.Tensor, rows: torch.Tensor, state: dict[str, Any]
    ) -> torch.Tensor:
        return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)

    def describe(self) -> str:
        return self.name

    @property
    def spec(self) -> str:
        """A short string :func:`parse_criterion` reads back (gear tables, stack folders)."""
        return self.name


def parse_criterion(value: Any) -> Criterion:
    """An exit criterion from a Criterion, a threshold (float: entropy), or a spec string:
    ``"entropy:0.3"``, ``"entropy:0.1,0.2,0.3"`` (one per exit), ``"patience:2"``,
    ``"patience:2:0.5"`` (regression tolerance). ConfigError lists the forms."""
    if isinstance(value, Criterion):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Entropy(float(value))
    if isinstance(value, str):
        name, _, rest = value.partition(":")
        try:
            if name == "entropy":
                parts = [float(x) for x in rest.split(",")]
                return Entropy(parts[0] if len(parts) == 1 else parts)
            if name == "patience":
                p, _, tol = rest.partition(":")
                return Patience(int(p), tolerance=float(tol) if tol else 0.1)
            if name == "none":
                return Criterion()
        except ValueError:
            pass
    raise ConfigError(
        f"exit criterion {value!r} is not understood: give a threshold (0.3 = entropy < 0.3), "
        "'entropy:0.3', 'entropy:0.1,0.2,...' (one per exit), 'patience:2' or 'patience:2:0.5'"
    )


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) per row."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@dataclass
class Entropy(Criterion):
    """Leave when entropy < threshold (``thresholds``: one value, or one per exit layer)."""

    thresholds: float | Sequence[float] = 0.1
    name = "entropy"

    def threshold(self, layer: int) -> float:
        if isinstance(self.thresholds, (int, float)):
            return float(self.thresholds)
        if layer >= len(self.thresholds):
            raise ConfigError(
                f"the entropy schedule has {len(self.thresholds)} thresholds but exit layer "
                f"{layer} asked: give one per exit (layers 0 .. L-2)"
            )
        return float(self.thresholds[layer])

    def decide(self, layer, logits, rows, state):
        if logits.dim() == 1:
            raise ConfigError(
                "entropy is undefined for a regression exit: use Patience (tolerance) instead"
            )
        return entropy(logits) < self.threshold(layer)

    def describe(self) -> str:
        if isinstance(self.thresholds, (int, float)):
            return f"entropy < {self.thresholds:g}"
        return "entropy < [" + ", ".join(f"{t:g}" for t in self.thresholds) + "]"

    @property
    def spec(self) -> str:
        if isinstance(self.thresholds, (int, float)):
            return f"entropy:{self.thresholds:g}"
        return "entropy:" + ",".join(f"{t:g}" for t in self.thresholds)


@dataclass
class Patience(Criterion):
    """Leave once ``patience`` consecutive exits agree with the one before them (PABEE):
    the same argmax, or (regression) predictions within ``tolerance``."""

    patience: int = 2
    tolerance: float = 0.1
    name = "patience"

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ConfigError(f"patience={self.patience} must be >= 1")

    def start(self, batch_size, device):
        return {
            "count": torch.zeros(batch_size, dtype=torch.long, device=device),
            "last": None,
        }

    def decide(self, layer, logits, rows, state):
        regression = logits.dim() == 1  # (rows,) predictions; else (rows, classes)
        pred = logits.float() if regression else logits.argmax(-1).float()
        if state["last"] is None:
            state["last"] = torch.full((state["count"].shape[0],), math.nan, device=logits.device)
        prev = state["last"][rows]
        if regression:
            same = (pred - prev).abs() <= self.tolerance
        else:
            same = pred == prev
        count = torch.where(same, state["count"][rows] + 1, torch.zeros_like(rows))
        state["count"][rows] = count
        state["last"][rows] = pred
        return count >= self.patience

    def describe(self) -> str:
        return f"patience {self.patience}" + (
            f" (tolerance {self.tolerance:g})" if self.tolerance != 0.1 else ""
        )

    @property
    def spec(self) -> str:
        return f"patience:{self.patience}:{self.tolerance:g}"


@dataclass
class Simulated:
    """What :func:`simulate` returns: each example's exit layer and the logits it used."""

    exit_layer: torch.Tensor  # (N,)
    logits: torch.Tensor  # (N, C)


def simulate(criterion: Criterion, exit_logits: torch.Tensor) -> Simulated:
    """Replay ``criterion`` on recorded logits ``(N, L, C)`` (every exit, the last being the
    head's; ``(N, L)`` for regression): the exit layer and logits each example gets, exactly
    as early exit would."""
    N, L = exit_logits.shape[:2]
    state = criterion.start(N, exit_logits.device)
    rows = torch.arange(N, device=exit_logits.device)
    exit_layer = torch.full((N,), L - 1, dtype=torch.long, device=exit_logits.device)
    for layer in range(L - 1):
        if rows.numel() == 0:
            break
        leave = criterion.decide(layer, exit_logits[rows, layer], rows, state)
        exit_layer[rows[leave]] = layer
        rows = rows[~leave]
    chosen = exit_logits[torch.arange(N), exit_layer]
    return Simulated(exit_layer, chosen)
