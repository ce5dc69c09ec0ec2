"""The controller: which gear the next batch runs in.

A policy is any object with ``choose(state: LoadState) -> str`` (a gear name); the worker
calls it before each batch, from its one thread. Write your own and pass
``--policy package.module:ClassName``: the class is built as ``ClassName(table, slo_ms,
**options)`` and may keep state between calls.

:class:`AdaptivePolicy` (the default) picks the most accurate gear whose predicted latency
keeps requests within the SLO, from the gear table's latency per batch size, the queue and
the measured arrival rate:

- *drain*: the request that waited longest finishes after its own wait plus the batches
  still ahead of the newest queued request: ``oldest_wait + sum of L(batch) over
  ceil(queue / max_batch) batches``;
- *steady state*: at arrival rate ``lam`` (per ms) the batch size settles where one batch's
  duration collects the next batch, the smallest ``b <= max_batch`` with ``lam * L(b) <= b``;
  a request then waits at most one batch and runs in the next, so ``max_delay + 2 * L(b)``.
  No such ``b``: the gear cannot keep up at all.

Latencies are the table's times ``scale``: after each batch the policy compares the time it
took with the table's entry and follows the ratio (``observe``), so a machine slower now
than when the table was measured is predicted as such. A gear *fits* when both predictions are within ``margin * slo``. Hysteresis: shifting to a
slower, more accurate gear needs the stricter ``up_margin`` to hold for ``up_hold``
consecutive decisions and ``min_dwell_s`` since the last shift; shifting down happens at
once. :class:`FixedPolicy` always answers one gear.
"""

from __future__ import annotations

import importlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

from gearshift.errors import ConfigError
from gearshift.serve.table import Gear, GearTable

logger = logging.getLogger("gearshift.serve")


@dataclass
class LoadState:
    """What the controller sees before a batch.

    ``queue_len``: texts waiting (the next batch included); ``oldest_wait_ms``: how long the
    oldest has waited; ``arrival_rate``: texts per second over the recent window;
    ``max_batch``, ``max_delay_ms``: the batcher's limits; ``now``: monotonic seconds.
    """

    queue_len: int
    oldest_wait_ms: float
    arrival_rate: float
    max_batch: int
    max_delay_ms: float
    now: float


class Policy(Protocol):
    """The controller interface: ``choose(state) -> gear name``, called once per batch.

    A policy may also define ``observe(gear, batch_size, seconds)``: the worker calls it
    after each batch with the time the model took (the adaptive policy calibrates with it).
    """

    def choose(self, state: LoadState) -> str: ...


def steady_batch(gear: Gear, rate_per_s: float, max_batch: int, scale: float = 1.0) -> int | None:
    """The batch size ``gear`` settles at under ``rate_per_s`` arrivals (None: overloaded);
    ``scale`` multiplies the table's latencies."""
    lam = rate_per_s / 1000.0
    for b in range(1, max_batch + 1):
        if lam * scale * gear.latency(b) <= b:
            return b
    return None


def predicted_ms(gear: Gear, state: LoadState, scale: float = 1.0) -> float:
    """The worst latency a queued or arriving request sees in ``gear`` (see the module);
    ``scale`` multiplies the table's latencies (this machine now vs when it was measured)."""
    q = max(0, state.queue_len)
    drain = 0.0
    left = q
    while left > 0:
        b = min(left, state.max_batch)
        drain += scale * gear.latency(b)
        left -= b
    drain += state.oldest_wait_ms if q else 0.0
    b = steady_batch(gear, state.arrival_rate, state.max_batch, scale)
    steady = math.inf if b is None else state.max_delay_ms + 2 * scale * gear.latency(b)
    return max(drain, steady)


class AdaptivePolicy:
    """Most accurate gear predicted within the SLO, with hysteresis (see the module)."""

    def __init__(
        self,
        table: GearTable,
        slo_ms: float,
        margin: float = 0.8,
        up_margin: float = 0.6,
        up_hold: int = 3,
        min_dwell_s: float = 0.5,
        start: str | None = None,
        calibration: float = 0.1,
    ) -> None:
        if slo_ms <= 0:
            raise ConfigError(f"slo_ms must be positive, got {slo_ms}")
        if not 0 < up_margin <= margin <= 1.5:
            raise ConfigError("need 0 < up_margin <= margin: shifting up must be the stricter test")
        self.table, self.slo_ms = table, float(slo_ms)
        self.margin, self.up_margin = margin, up_margin
        self.up_hold, self.min_dwell_s = up_hold, min_dwell_s
        self.order = list(table.gears)  # most accurate first
        self.current = start or self.order[0].name
        table.gear(self.current)
        self._up_votes = 0
        self._last_shift = -math.inf
        self.scale, self.calibration = 1.0, calibration

    def _rank(self, name: str) -> int:
        return next(i for i, g in enumerate(self.order) if g.name == name)

    def best_fitting(self, state: LoadState, margin: float) -> str:
        """The most accurate gear predicted within ``margin * slo``; else the one predicted
        fastest, and among gears that cannot keep up at all (predicted infinite) the one
        with the most throughput at the largest batch. (Ties at infinity once went to the
        first, most accurate gear: under overload the controller then shifted *up*.)"""
        for g in self.order:
            if predicted_ms(g, state, self.scale) <= margin * self.slo_ms:
                return g.name
        return min(
            self.order,
            key=lambda g: (
                predicted_ms(g, state, self.scale),
                g.latency(state.max_batch) / state.max_batch,
            ),
        ).name

    def observe(self, gear: str, batch_size: int, seconds: float) -> None:
        """Calibrate: ``scale`` follows (EWMA, clamped to [0.25, 20]) how much slower than
        its table entry this machine ran the last batches (the table is measured once; the
        machine's load changes)."""
        ratio = seconds * 1000 / self.table.gear(gear).latency(batch_size)
        ratio = min(20.0, max(0.25, ratio))
        self.scale += self.calibration * (ratio - self.scale)

    def choose(self, state: LoadState) -> str:
        cur = self._rank(self.current)
        down = self._rank(self.best_fitting(state, self.margin))
        if down > cur:  # the current gear would miss: shift down now
            self._shift(down, state.now)
            return self.current
        up = self._rank(self.best_fitting(state, self.up_margin))
        if up < cur and state.now - self._last_shift >= self.min_dwell_s:
            self._up_votes += 1
            if self._up_votes >= self.up_hold:
                self._shift(cur - 1, state.now)  # one gear at a time
        else:
            self._up_votes = 0
        return self.current

    def _shift(self, rank: int, now: float) -> None:
        self.current = self.order[rank].name
        self._up_votes = 0
        self._last_shift = now


class FixedPolicy:
    """Always the same gear (``--policy fixed --gear NAME``)."""

    def __init__(self, table: GearTable, slo_ms: float, gear: str | None = None) -> None:
        self.current = gear or table.gears[0].name
        table.gear(self.current)

    def choose(self, state: LoadState) -> str:
        return self.current


def make_policy(
    spec: str, table: GearTable, slo_ms: float, gear: str | None = None, **options: Any
) -> Policy:
    """Build the policy named ``spec``: "adaptive", "fixed" or "module:Class"."""
    if spec == "adaptive":
        return AdaptivePolicy(table, slo_ms, start=gear, **options)
    if spec == "fixed":
        return FixedPolicy(table, slo_ms, gear)
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ConfigError(
            f"--policy {spec!r}: use 'adaptive', 'fixed' or 'package.module:ClassName'"
        )
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--policy {spec!r}: cannot import {name} from {module} ({exc})") from exc
    policy = cls(table, slo_ms, **options)
    if not callable(getattr(policy, "choose", None)):
        raise ConfigError(f"--policy {spec!r}: {name} has no choose(state) method")
    return policy
