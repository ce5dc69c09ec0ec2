"""Measure plugins and baselines as operating points against their teacher, in one run.

Every candidate is a ForwardPlan on the same frozen base model (None = the teacher itself),
so score, FLOPs and latency are measured the same way for all, and the latency ratios come
from one interleaved :func:`~gearshift.measure.compare_latency` run per batch size.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gearshift.data import TaskSpec
from gearshift.errors import ArtifactError, ConfigError
from gearshift.measure import (
    LatencyComparison,
    OperatingPoint,
    compare_latency,
    count_parameters,
    flops_at_length,
    flops_per_example,
    forward_fn,
    machine_description,
    make_batch,
)
from gearshift.measure.report import now_iso
from gearshift.runtime.model import Transformer
from gearshift.runtime.plan import ForwardPlan

from .baselines import mean_merging, truncation_plan
from .model import load_plugin


@dataclass
class Candidate:
    """One setting to measure: ``plan`` on the base model (None = the teacher)."""

    name: str  # the row's setting, e.g. "k4-ffn"; unique within a run
    method: str  # "teacher", "plugin", "mean-merging", "truncation"
    plan: ForwardPlan | None
    params_added: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


def count_costs(
    base: Transformer,
    tokenizer: Any,
    candidate: Candidate,
    texts: Sequence[str | tuple[str, str]],
    seq_len: int = 128,
) -> dict[str, float]:
    """FLOPs per example of ``candidate``: on ``texts`` each at its own length (batch 1, cut
    at ``seq_len``) and at the fixed length ``seq_len``."""
    singles = (make_batch(tokenizer, [text], 1, max_length=seq_len) for text in texts)
    return {
        "flops_dynamic": flops_per_example(base, singles, candidate.plan),
        "flops_128": flops_at_length(base, seq_len, candidate.plan),
    }


def compare_candidates(
    base: Transformer,
    tokenizer: Any,
    candidates: Sequence[Candidate],
    texts: Sequence[str | tuple[str, str]],
    *,
    threads: int | None = None,
    seq_len: int = 128,
    warmup: int = 5,
    repeats: int = 30,
    batch_sizes: Sequence[int] = (1, 32),
) -> dict[int, LatencyComparison]:
    """One interleaved latency run per batch size over every candidate (the first is the
    reference); batches of real ``texts`` with dynamic padding, cut at ``seq_len``."""
    fns = {c.name: forward_fn(base, c.plan) for c in candidates}
    return {
        size: compare_latency(
            fns,
            make_batch(tokenizer, texts, size, max_length=seq_len),
            reference=candidates[0].name,
            warmup=warmup,
            repeats=repeats,
            threads=threads,
        )
        for size in batch_sizes
    }


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
    score the ``reference_score``. ``dev``: a :class:`gearshift.data.taskdata.TaskData`; ``texts``: real
    dev inputs for FLOPs (each at its own length, batch 1) and latency (batches of 1 and 32
    with dynamic padding, cut at ``seq_len``).
    """
    from gearshift.measure.evaluate import evaluate

    if not candidates or candidates[0].plan is not None:
        raise ValueError("the first candidate must be the teacher (plan None)")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {names}")
    base.eval()
    base_params = count_parameters(base)

    measured: dict[str, dict[str, Any]] = {}
    for c in candidates:
        metrics = evaluate(base, dev, plan=c.plan)
        measured[c.name] = {"metrics": metrics, **count_costs(base, tokenizer, c, texts, seq_len)}
        if progress:
            print(
                f"[plugins] {task.name} {c.name}: {task.main_metric} = "
                f"{metrics[task.main_metric]:.2f}",
                flush=True,
            )

    latency = compare_candidates(
        base,
        tokenizer,
        candidates,
        texts,
        threads=threads,
        seq_len=seq_len,
        warmup=warmup,
        repeats=repeats,
        batch_sizes=batch_sizes,
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


# ---------------------------------------------------------------------- re-timing saved rows
MEAN_SETTING = re.compile(r"^k(?P<k>\d+)-(?P<placement>ffn|layer)-mean(?P<cls>-cls)?$")
TRUNCATE_SETTING = re.compile(r"^k(?P<k>\d+)-truncate$")


def candidate_from_row(row: Mapping[str, Any], base: Transformer) -> Candidate:
    """Rebuild the candidate a results row measured on ``base``.

    A trained plugin reloads from the folder the row records (``extras["plugin_dir"]``); the
    training-free baselines are rebuilt from the setting's name (``k4-ffn-mean``,
    ``k4-truncate``).
    """
    setting, method = row["setting"], row["method"]
    where = f"{row.get('task', '?')} {setting}"
    if method == "teacher":
        return Candidate(setting, "teacher", None)
    if method == "plugin":
        folder = row.get("extras", {}).get("plugin_dir")
        if not folder or not Path(folder).is_dir():
            raise ArtifactError(
                f"{where}: the trained plugin {folder!r} is not there; measure the row again "
                "(train and evaluate) instead of re-timing it"
            )
        plugin = load_plugin(folder, base)
        return Candidate(setting, method, plugin.plan(), plugin.num_parameters())
    if method == "mean-merging" and (m := MEAN_SETTING.match(setting)):
        plugin = mean_merging(base, int(m["k"]), m["placement"], keep_first_token=bool(m["cls"]))
        return Candidate(setting, method, plugin.plan())
    if method == "truncation" and (m := TRUNCATE_SETTING.match(setting)):
        return Candidate(setting, method, truncation_plan(base, int(m["k"])))
    raise ConfigError(f"{where}: cannot rebuild a {method!r} row named {setting!r}")


def retime_rows(
    base: Transformer,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    texts: Sequence[str | tuple[str, str]],
    *,
    command: str,
    threads: int | None = None,
    seq_len: int = 128,
    warmup: int = 5,
    repeats: int = 30,
    batch_sizes: Sequence[int] = (1, 32),
) -> list[dict[str, Any]]:
    """Re-measure the costs of saved rows of one task: latency ratios (one interleaved run)
    and FLOPs (recounted, so they follow the current code), not the scores.

    Timings are what a loaded machine distorts, so this is how rows are re-timed on a quiet
    one; scores are deterministic and stay. The rows must include their teacher
    (the reference). Returns copies of the rows with new ratios and milliseconds; each keeps
    its own command and date and records the re-timing's command, date, machine and thread
    count under ``extras["latency_measured"]``.
    """
    rows = sorted((copy.deepcopy(dict(r)) for r in rows), key=lambda r: r["method"] != "teacher")
    if not rows or rows[0]["method"] != "teacher":
        raise ConfigError(
            "re-timing needs the task's teacher row (the latency reference) among the rows; "
            "measure the task first"
        )
    if len({r.get("task") for r in rows}) != 1:
        raise ConfigError("re-time the rows of one task at a time (one teacher, one base model)")
    candidates = [candidate_from_row(r, base) for r in rows]
    costs = [count_costs(base, tokenizer, c, texts, seq_len) for c in candidates]
    latency = compare_candidates(
        base,
        tokenizer,
        candidates,
        texts,
        threads=threads,
        seq_len=seq_len,
        warmup=warmup,
        repeats=repeats,
        batch_sizes=batch_sizes,
    )
    when = now_iso()
    for r, cost in zip(rows, costs):
        extras = r.setdefault("extras", {})
        r.update(cost)
        for key, value in cost.items():
            extras[f"saved_{key}"] = 1.0 - value / costs[0][key]
        for size, comparison in latency.items():
            r[f"latency_ratio_b{size}"] = comparison.ratios[r["setting"]]
            extras[f"latency_ms_b{size}"] = comparison.stats[r["setting"]].median_ms
        extras["latency_measured"] = {
            "command": command,
            "date": when,
            "machine": machine_description(),
            "threads": threads,
        }
    return rows
