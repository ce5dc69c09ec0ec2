"""One timing protocol for every benchmark: saved artifacts re-timed quietly.

Benchmarks time their models while they train and score them, often beside other jobs, so
those latencies are noisy. This module is the protocol every latency in BENCHMARKS.md is
meant to come from: reload what a run saved, then time every candidate against the
reference

- on a quiet machine (:func:`check_quiet` refuses to start while other processes use more
  than ``max_load`` of the cores, unless told to record a loaded re-time),
- at a fixed thread count, after warm-up rounds,
- interleaved in one process (A B C A B C ..., :func:`~gearshift.measure.compare_latency`),
- in several independent ``rounds``, so each ratio comes with its spread over rounds.

:func:`retime` returns, per batch size, each candidate's median ratio over rounds and its
(min, max) over rounds; :func:`retime_rows` writes them into copies of result rows
(``extras["retime"]``), keeping the earlier in-run ratios under
``extras["latency_before_retime"]``. Scores are never touched.
"""

from __future__ import annotations

import copy
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gearshift.errors import ConfigError
from gearshift.measure.latency import ModelFn, compare_latency


@dataclass(frozen=True)
class TimingProtocol:
    """How every re-timing runs: ``threads`` intra-op threads, ``warmup`` untimed rounds
    and ``repeats`` timed calls per candidate in each of ``rounds`` interleaved runs;
    ``max_load``: the highest share of the cores other processes may use (over a 1 s
    sample, :func:`load_per_core`) for the machine to count as quiet."""

    threads: int = 1
    warmup: int = 10
    repeats: int = 30
    rounds: int = 5
    max_load: float = 0.25

    def __post_init__(self) -> None:
        for name in ("threads", "warmup", "repeats", "rounds"):
            value = getattr(self, name)
            low = 0 if name == "warmup" else 1
            if not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"TimingProtocol.{name} must be an integer >= {low}, got {value!r}"
                )
        if self.max_load <= 0:
            raise ConfigError(f"TimingProtocol.max_load must be > 0, got {self.max_load!r}")


QUICK = TimingProtocol(warmup=1, repeats=2, rounds=2, max_load=float("inf"))


def load_per_core(sample_s: float = 1.0) -> float:
    """How busy the rest of the machine is: CPU time used by other processes over a
    ``sample_s`` sample, per core (0 = idle, 1 = every core busy). This process's own use is
    left out, which the load average cannot do: a benchmark that has just scored its models
    on one core would otherwise find its own work "load" and refuse to time. Falls back to
    the 1-minute load average per core where psutil cannot read the counters."""
    try:
        import time

        import psutil

        me = psutil.Process()

        def busy(t) -> float:
            return sum(t) - t.idle - getattr(t, "iowait", 0.0)

        def own() -> float:
            c = me.cpu_times()
            return c.user + c.system

        t0, m0 = psutil.cpu_times(), own()
        time.sleep(sample_s)
        t1, m1 = psutil.cpu_times(), own()
        total = sum(t1) - sum(t0)
        if total <= 0:
            raise OSError("no CPU time elapsed")
        return max(0.0, min(1.0, (busy(t1) - busy(t0) - (m1 - m0)) / total))
    except (ImportError, OSError, AttributeError):
        pass
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (AttributeError, OSError):
        return 0.0


def check_quiet(protocol: TimingProtocol, allow_load: bool = False) -> float:
    """Return the load per core; raise ``ConfigError`` when it is above the protocol's
    ``max_load`` and ``allow_load`` is False (a loaded machine makes the ratios noisy)."""
    load = load_per_core()
    if load > protocol.max_load and not allow_load:
        raise ConfigError(
            f"the machine is not quiet: other processes use {load:.2f} of each core, above "
            f"max_load {protocol.max_load:.2f}; stop the other jobs and re-time, or pass "
            "--allow-load to record a loaded re-time (the rows then say so)"
        )
    return load


@dataclass
class Retimed:
    """One batch size's re-timing: per candidate, the median over rounds of its ratio to
    the reference (``ratios``), the (min, max) of that ratio over rounds (``spread``) and
    the median milliseconds per call over rounds (``median_ms``)."""

    reference: str
    batch_size: int
    ratios: dict[str, float]
    spread: dict[str, tuple[float, float]]
    median_ms: dict[str, float]
    rounds: list[dict[str, float]] = field(default_factory=list)


def retime(
    candidates: Mapping[str, ModelFn],
    batches: Mapping[int, Mapping[str, Any]],
    reference: str,
    protocol: TimingProtocol = TimingProtocol(),
    allow_load: bool = False,
) -> dict[int, Retimed]:
    """Time ``candidates`` (name -> callable on a batch) against ``reference`` on each of
    ``batches`` (batch size -> batch) by ``protocol``; return a :class:`Retimed` per batch
    size. Raises ``ConfigError`` when the machine is not quiet (``check_quiet``)."""
    if reference not in candidates:
        raise ConfigError(
            f"reference {reference!r} is not one of the candidates {sorted(candidates)}; "
            "pass the teacher (or the model the ratios are to) among them"
        )
    check_quiet(protocol, allow_load)
    out = {}
    for size, batch in batches.items():
        rounds, ms = [], {name: [] for name in candidates}
        for _ in range(protocol.rounds):
            cmp = compare_latency(
                candidates,
                batch,
                reference=reference,
                warmup=protocol.warmup,
                repeats=protocol.repeats,
                threads=protocol.threads,
            )
            rounds.append(dict(cmp.ratios))
            for name, stats in cmp.stats.items():
                ms[name].append(stats.median_ms)
        out[size] = Retimed(
            reference=reference,
            batch_size=size,
            ratios={n: statistics.median(r[n] for r in rounds) for n in candidates},
            spread={n: (min(r[n] for r in rounds), max(r[n] for r in rounds)) for n in candidates},
            median_ms={n: statistics.median(v) for n, v in ms.items()},
            rounds=rounds,
        )
    return out


def retime_rows(
    rows: Sequence[Mapping[str, Any]],
    reference_row: Mapping[str, Any],
    load_candidate: Callable[[Mapping[str, Any]], ModelFn],
    batches: Mapping[int, Mapping[str, Any]],
    *,
    command: str,
    protocol: TimingProtocol = TimingProtocol(),
    allow_load: bool = False,
    machine: str | None = None,
    date: str | None = None,
) -> list[dict[str, Any]]:
    """Re-time result ``rows`` of one task against ``reference_row`` (its teacher): each
    row's candidate comes from ``load_candidate(row)`` (reloading the row's saved artifact),
    all timed in one process by :func:`retime`. Returns copies of the rows with
    ``latency_ratio_b<size>`` replaced by the protocol's median ratio, the earlier values
    under ``extras["latency_before_retime"]`` and the protocol, spreads, load and the
    re-timing's command, date and machine under ``extras["retime"]``."""
    from gearshift.measure.report import machine_description, now_iso

    names = [f"{r['method']} | {r['setting']}" for r in rows]
    if len(set(names)) != len(names):
        raise ConfigError("retime_rows got two rows of one (method, setting); pass each once")
    ref_name = f"{reference_row['method']} | {reference_row['setting']}"
    candidates = {ref_name: load_candidate(reference_row)}
    candidates |= {n: load_candidate(r) for n, r in zip(names, rows) if n != ref_name}
    load = load_per_core()
    timed = retime(candidates, batches, ref_name, protocol, allow_load)
    out = []
    for name, row in zip(names, rows):
        new = copy.deepcopy(dict(row))
        extras = new.setdefault("extras", {})
        before = {
            f"latency_ratio_b{s}": row.get(f"latency_ratio_b{s}") for s in timed if s in (1, 32)
        }
        extras.setdefault("latency_before_retime", before)
        record: dict[str, Any] = {
            "protocol": asdict(protocol),
            "reference": ref_name,
            "load_per_core": round(load, 3),
            "quiet": load <= protocol.max_load,
            "command": command,
            "date": date or now_iso(),
            "machine": machine or machine_description(),
        }
        for size, result in timed.items():
            ratio = 1.0 if name == ref_name else result.ratios[name]
            lo, hi = (1.0, 1.0) if name == ref_name else result.spread[name]
            record[f"ratio_b{size}"] = ratio
            record[f"ratio_b{size}_spread"] = [lo, hi]
            record[f"median_ms_b{size}"] = result.median_ms[name]
            new[f"latency_ratio_b{size}"] = ratio
        extras["retime"] = record
        out.append(new)
    return out
