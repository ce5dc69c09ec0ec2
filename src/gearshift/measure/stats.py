"""Paired significance of a score difference between two models on the same examples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import binomtest

from gearshift.errors import ConfigError


@dataclass
class PairedTest:
    """McNemar's exact test on the examples where exactly one model is right."""

    a_only: int  # examples model A gets right and model B wrong
    b_only: int
    p_value: float  # two-sided

    def better(self, alpha: float = 0.05) -> bool:
        """Whether A is right more often than B, significantly at ``alpha``."""
        return self.a_only > self.b_only and self.p_value < alpha


def mcnemar(preds_a: Sequence, preds_b: Sequence, labels: Sequence) -> PairedTest:
    """McNemar's exact (binomial) test of two classifiers' predictions on the same labelled
    examples: under the null, each disagreement on correctness is a fair coin."""
    if not (len(preds_a) == len(preds_b) == len(labels)):
        raise ConfigError(
            f"paired test needs predictions for the same examples: got {len(preds_a)}, "
            f"{len(preds_b)} predictions and {len(labels)} labels"
        )
    a_only = sum(a == y and b != y for a, b, y in zip(preds_a, preds_b, labels))
    b_only = sum(b == y and a != y for a, b, y in zip(preds_a, preds_b, labels))
    n = a_only + b_only
    p = 1.0 if n == 0 else float(binomtest(a_only, n, 0.5).pvalue)
    return PairedTest(a_only, b_only, p)


def encode_labels(values: Sequence[int]) -> str:
    """Class ids 0-9 as one digit string (compact in a results row); others raise."""
    if any(not 0 <= int(v) <= 9 for v in values):
        raise ConfigError("encode_labels stores class ids 0-9 only")
    return "".join(str(int(v)) for v in values)


def decode_labels(text: str) -> list[int]:
    return [int(c) for c in text]
