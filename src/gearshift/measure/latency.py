"""Wall-clock latency: fixed threads, warm-up first, median and p90 of many runs.

Every speed claim is a ratio against a reference measured in the same run:
:func:`compare_latency` times all candidates interleaved round-robin (A B C A B C ...), so
slow drifts of the machine (other load, clock changes) hit every candidate alike.

A candidate is any callable taking the batch, so a method can time its own forward; use
:func:`forward_fn` to turn a model (and a plan) into one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from gearshift.measure.flops import batch_size_of, model_inputs
from gearshift.runtime.plan import ForwardPlan

ModelFn = Callable[[Mapping[str, Any]], Any]


@dataclass
class LatencyStats:
    """Timing of one callable on one batch, in milliseconds per call (whole batch)."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    repeats: int
    batch_size: int
    threads: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass
class LatencyComparison:
    """Candidates timed in one interleaved run.

    ``ratios[name]`` is the candidate's median over the reference's median (below 1 = faster).
    """

    stats: dict[str, LatencyStats]
    ratios: dict[str, float]
    reference: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "ratios": dict(self.ratios),
            "stats": {k: v.to_dict() for k, v in self.stats.items()},
        }


def forward_fn(model: nn.Module, plan: ForwardPlan | None = None) -> ModelFn:
    """Return a callable ``fn(batch)`` that runs ``model`` (with ``plan``) on a batch dict.

    Only the model's inputs are passed (labels and other keys are dropped), moved to the
    model's device.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def run(batch: Mapping[str, Any]) -> Any:
        inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
        if plan is not None:
            inputs["plan"] = plan
        return model(**inputs)

    return run


@contextmanager
def fixed_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)``; yield the count in force.

    ``None`` keeps the current count. The previous count is restored afterwards.
    """
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _uses_cuda(batch: Mapping[str, Any]) -> bool:
    return any(isinstance(v, torch.Tensor) and v.is_cuda for v in batch.values())


def _time_once(fn: ModelFn, batch: Mapping[str, Any], sync: bool) -> float:
    """Run ``fn(batch)`` once without gradients; return the elapsed milliseconds."""
    if sync:
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        fn(batch)
    if sync:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000.0


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0..100) of ``values``, linearly interpolated."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _stats(times_ms: Sequence[float], batch_size: int, threads: int) -> LatencyStats:
    return LatencyStats(
        median_ms=statistics.median(times_ms),
        p90_ms=percentile(times_ms, 90),
        mean_ms=statistics.fmean(times_ms),
        repeats=len(times_ms),
        batch_size=batch_size,
        threads=threads,
    )


def measure_latency(
    model_fn: ModelFn,
    batch: Mapping[str, Any],
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
) -> LatencyStats:
    """Time ``model_fn(batch)``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    Runs under ``torch.inference_mode`` with ``threads`` intra-op threads (None: the current
    setting), restored afterwards. Returns the median, p90 and mean in milliseconds per call.
    """
    return compare_latency(
        {"model": model_fn}, batch, warmup=warmup, repeats=repeats, threads=threads
    ).stats["model"]


def compare_latency(
    candidates: Mapping[str, ModelFn],
    batch: Mapping[str, Any],
    reference: str | None = None,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
) -> LatencyComparison:
    """Time every candidate on ``batch`` in one run, interleaved round-robin.

    Each round calls every candidate once, in the given order (A B C A B C ...); ``warmup``
    rounds are untimed. ``reference`` (default: the first candidate) is the denominator of
    the returned ratios of medians. Returns a :class:`LatencyComparison`.
    """
    if not candidates:
        raise ValueError("compare_latency needs at least one candidate")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    names = list(candidates)
    reference = names[0] if reference is None else reference
    if reference not in candidates:
        raise KeyError(f"reference {reference!r} is not one of the candidates {names}")
    sync = _uses_cuda(batch)
    size = batch_size_of(batch)
    times: dict[str, list[float]] = {name: [] for name in names}
    with fixed_threads(threads) as used:
        for _ in range(warmup):
            for name in names:
                _time_once(candidates[name], batch, sync)
        for _ in range(repeats):
            for name in names:
                times[name].append(_time_once(candidates[name], batch, sync))
    stats = {name: _stats(times[name], size, used) for name in names}
    ref = stats[reference].median_ms
    ratios = {name: s.median_ms / ref for name, s in stats.items()}
    return LatencyComparison(stats=stats, ratios=ratios, reference=reference)


def make_batch(
    tokenizer: Any,
    texts: Sequence[str | tuple[str, str]],
    batch_size: int,
    max_length: int = 128,
    pad_to: int | None = None,
) -> dict[str, torch.Tensor]:
    """Return a padded batch of ``batch_size`` examples built from ``texts``.

    ``texts`` are strings or (first, second) pairs; the first ``batch_size`` are used (cycled
    when there are fewer). Sequences are truncated to ``max_length``; ``pad_to=None`` pads to
    the longest in the batch (dynamic padding), ``pad_to=128`` pads (and truncates) every row
    to exactly 128 tokens. Returns a dict of tensors as the tokenizer gives them.
    """
    if not texts:
        raise ValueError("make_batch needs at least one text")
    chosen = [texts[i % len(texts)] for i in range(batch_size)]
    firsts = [t[0] if isinstance(t, tuple | list) else t for t in chosen]
    seconds = [t[1] for t in chosen] if isinstance(chosen[0], tuple | list) else None
    length = pad_to if pad_to is not None else max_length
    return dict(
        tokenizer(
            firsts,
            seconds,
            truncation=True,
            max_length=length,
            padding="max_length" if pad_to is not None else "longest",
            return_tensors="pt",
        )
    )
