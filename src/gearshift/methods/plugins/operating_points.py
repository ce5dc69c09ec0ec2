"""Measure plugins and baselines as operating points against their teacher, in one run.

Every candidate is a ForwardPlan on the same frozen base model (None = the teacher itself),
so score, FLOPs and latency are measured the same way for all, and the latency ratios come
from one interleaved :func:`~gearshift.measure.compare_latency` run per batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gearshift.data import TaskSpec
from gearshift.measure import (
    OperatingPoint,
    compare_latency,
    count_parameters,
    flops_at_length,
    flops_per_example,
    forward_fn,
    make_batch,
)
from gearshift.runtime.model import Transformer
from gearshift.runtime.plan import ForwardPlan


@dataclass
class Candidate:
    """One setting to measure: ``plan`` on the base model (None = the teacher)."""

    name: str  # the row's setting, e.g. "k4-ffn"; unique within a run
    method: str  # "teacher", "plugin", "mean-merging", "truncation"
    plan: ForwardPlan | None
    params_added: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


def measure_candidates(
    base: Transformer,
    tokenizer: Any,
    task: TaskSpec,
    dev: Any,
    candidates: Sequence[Candidate],
    texts: Sequence[str | tuple[str, str]],
    *,
    model_name: str,
    command: str,
    threads: int | None = None,
    seq_len: int = 128,
    warmup: int = 5,
    repeats: int = 30,
    batch_sizes: Sequence[int] = (1, 32),
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Score, FLOPs, parameters and latency ratios of every candidate; returns row dicts.

    The first candidate must be the teacher (plan None): it is the latency reference and its
    score the ``reference_score``. ``dev``: a :class:`gearshift.jobs.TaskData`; ``texts``: real
    dev inputs for FLOPs (each at its own length, batch 1) and latency (batches of 1 and 32
    with dynamic padding, cut at ``seq_len``).
    """
    from gearshift.jobs import evaluate

    if not candidates or candidates[0].plan is not None:
        raise ValueError("the first candidate must be the teacher (plan None)")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {names}")
    base.eval()
    base_params = count_parameters(base)

    def singles():
        for text in texts:
            yield make_batch(tokenizer, [text], 1, max_length=seq_len)

    measured: dict[str, dict[str, Any]] = {}
    for c in candidates:
        metrics = evaluate(base, dev, plan=c.plan)
        measured[c.name] = {
            "metrics": metrics,
            "flops_dynamic": flops_per_example(base, singles(), c.plan),
            "flops_128": flops_at_length(base, seq_len, c.plan),
        }
        if progress:
            print(
                f"[plugins] {task.name} {c.name}: {task.main_metric} = "
                f"{metrics[task.main_metric]:.2f}",
                flush=True,
            )

    fns = {c.name: forward_fn(base, c.plan) for c in candidates}
    latency = {}
    for size in batch_sizes:
        batch = make_batch(tokenizer, texts, size, max_length=seq_len)
        latency[size] = compare_latency(
            fns,
            batch,
            reference=candidates[0].name,
            warmup=warmup,
            repeats=repeats,
            threads=threads,
        )

    teacher = measured[candidates[0].name]
    reference_score = teacher["metrics"][task.main_metric]
    rows = []
    for c in candidates:
        m = measured[c.name]
        extras = {
            "added_params": c.params_added,
            "saved_flops_128": 1.0 - m["flops_128"] / teacher["flops_128"],
            "saved_flops_dynamic": 1.0 - m["flops_dynamic"] / teacher["flops_dynamic"],
            "dev_metrics": m["metrics"],
            **{f"latency_ms_b{s}": latency[s].stats[c.name].median_ms for s in batch_sizes},
            **c.extras,
        }
        rows.append(
            OperatingPoint(
                task=task.name,
                model=model_name,
                method=c.method,
                setting=c.name,
                metric=task.main_metric,
                score=m["metrics"][task.main_metric],
                flops_dynamic=m["flops_dynamic"],
                flops_128=m["flops_128"],
                params=base_params + c.params_added,
                latency_ratio_b1=latency[1].ratios[c.name] if 1 in latency else None,
                latency_ratio_b32=latency[32].ratios[c.name] if 32 in latency else None,
                reference_score=reference_score,
                command=command,
                extras=extras,
            ).to_dict()
        )
    return rows
