"""The controller's choices on a synthetic gear table (no model, no server)."""

from __future__ import annotations

import pytest

from gearshift.errors import ConfigError
from gearshift.serve.policy import (
    AdaptivePolicy,
    FixedPolicy,
    LoadState,
    make_policy,
    predicted_ms,
    steady_batch,
)
from gearshift.serve.table import Gear, GearTable, TaskInfo


def table() -> GearTable:
    """Three gears: full (best, 10 ms at batch 1, 100 at 32), k4 (4 / 30), k8 (2 / 12)."""
    return GearTable(
        TaskInfo("sst2"),
        {"base": None},
        [
            Gear("k8", "base", {"plugins": "k8"}, score=86.0, latency_ms={1: 2, 8: 5, 32: 12}),
            Gear("full", "base", {}, score=91.0, latency_ms={1: 10, 8: 30, 32: 100}),
            Gear("k4", "base", {"plugins": "k4"}, score=89.5, latency_ms={1: 4, 8: 11, 32: 30}),
        ],
    )


def state(rate: float, queue: int = 0, wait: float = 0.0, t: float = 0.0) -> LoadState:
    return LoadState(queue, wait, rate, max_batch=32, max_delay_ms=5, now=t)


def test_table_orders_by_score_and_interpolates():
    t = table()
    assert t.names == ["full", "k4", "k8"]
    full = t.gear("full")
    assert full.latency(8) == 30
    assert full.latency(20) == pytest.approx(30 + (100 - 30) * 12 / 24)
    assert full.latency(64) == pytest.approx(100 + (100 - 30) / 24 * 32)
    assert t.fastest().name == "k8"
    assert t.reference.name == "full"


def test_reference_is_the_full_gear_even_when_another_scores_higher():
    t = table()
    t.gears.append(Gear("int8", "int8", {}, score=91.4, latency_ms={1: 5, 8: 15, 32: 50}))
    t.__post_init__()
    assert t.gears[0].name == "int8" and t.reference.name == "full"
    no_full = GearTable(TaskInfo("sst2"), {"base": None}, [g for g in t.gears if g.name != "full"])
    assert no_full.reference.name == "int8"  # without a "full" gear: the most accurate


def test_steady_batch_and_prediction():
    full = table().gear("full")
    assert steady_batch(full, 10, 32) == 1  # 10/s: each request runs alone
    b = steady_batch(full, 300, 32)  # 0.3 per ms: needs b with 0.3 * L(b) <= b
    assert b is not None and 0.3 * full.latency(b) <= b and 0.3 * full.latency(b - 1) > b - 1
    assert steady_batch(full, 400, 32) is None  # 32 per 100 ms = 320/s is the ceiling
    assert predicted_ms(full, state(400)) == float("inf")
    # a queue of 64 at batch 32: two batches of 100 ms plus the oldest's wait
    assert predicted_ms(full, state(1, queue=64, wait=20)) == pytest.approx(220)


def test_rising_load_shifts_down_at_once():
    p = AdaptivePolicy(table(), slo_ms=100, min_dwell_s=0)
    assert p.choose(state(5, t=0)) == "full"
    assert p.choose(state(300, t=1)) == "k4"  # full's steady state misses 80 ms
    assert p.choose(state(1500, t=2)) == "k8"  # only k8 keeps up
    assert p.choose(state(10_000, t=3)) == "k8"  # nothing fits: the fastest


def test_sustained_overload_stays_on_the_fastest_gear():
    """Every gear predicted infinite (the load exceeds them all): the controller holds the
    gear with the most throughput, however long it lasts. It used to read the tie at
    infinity as "the most accurate fits" and climb one gear per few batches (the serving
    benchmark's overload phases showed it)."""
    p = AdaptivePolicy(table(), slo_ms=100, min_dwell_s=0, up_hold=2)
    p.choose(state(1500, t=0))
    assert p.current == "k8"
    for i in range(20):
        assert p.choose(state(10_000, queue=200, wait=500, t=1 + i * 0.1)) == "k8"
    assert p.best_fitting(state(10_000), p.margin) == "k8"


def test_queue_alone_shifts_down():
    p = AdaptivePolicy(table(), slo_ms=100)
    assert p.choose(state(1, queue=64, wait=10)) == "k4"  # full: 210 ms to drain


def test_falling_load_shifts_up_one_gear_after_hold():
    p = AdaptivePolicy(table(), slo_ms=100, up_hold=3, min_dwell_s=1.0)
    p.choose(state(1500, t=0.0))
    assert p.current == "k8"
    # load gone: k4 and full fit again, but shifting up waits for the dwell and the hold
    choices = [p.choose(state(5, t=0.1 * i)) for i in range(1, 6)]
    assert choices == ["k8"] * 5  # still within min_dwell_s of the shift
    choices = [p.choose(state(5, t=1.0 + 0.1 * i)) for i in range(3)]
    assert choices == ["k8", "k8", "k4"]  # three votes, then one gear up
    choices = [p.choose(state(5, t=3.0 + 0.1 * i)) for i in range(3)]
    assert choices == ["k4", "k4", "full"]


def test_hysteresis_no_flapping_near_a_boundary():
    """Load that alternates around full's limit shifts down once and does not shift back
    until the stricter up test holds for up_hold decisions in a row."""
    p = AdaptivePolicy(table(), slo_ms=100, up_hold=3, min_dwell_s=0)
    # 260/s: full's prediction sits between up_margin*slo (60) and margin*slo (80)
    near = predicted_ms(table().gear("full"), state(260))
    assert 60 < near <= 80
    p.choose(state(300))  # over the line: down to k4
    assert p.current == "k4"
    seq = [p.choose(state(rate, t=i)) for i, rate in enumerate([260, 300, 260, 260, 300] * 4)]
    assert set(seq) == {"k4"}  # never back to full: 260/s does not pass the up test
    shifts = sum(a != b for a, b in zip(seq, seq[1:]))
    assert shifts == 0
    # the same load without hysteresis (one margin, no hold) flaps on every change
    bare = AdaptivePolicy(table(), slo_ms=100, up_margin=0.8, up_hold=1, min_dwell_s=0)
    seq = [bare.choose(state(rate, t=i)) for i, rate in enumerate([260, 300] * 5)]
    assert seq == ["full", "k4"] * 5


def test_fixed_and_custom_policies():
    t = table()
    assert FixedPolicy(t, 100, "k4").choose(state(10_000)) == "k4"
    with pytest.raises(ConfigError, match="no gear named 'k3'"):
        FixedPolicy(t, 100, "k3")
    p = make_policy("gearshift.serve.policy:FixedPolicy", t, 100)
    assert p.choose(state(1)) == "full"
    with pytest.raises(ConfigError, match="module:ClassName"):
        make_policy("nonsense", t, 100)
    with pytest.raises(ConfigError, match="cannot import"):
        make_policy("gearshift.serve.policy:Nope", t, 100)
    with pytest.raises(ConfigError, match="up_margin"):
        AdaptivePolicy(t, 100, margin=0.5, up_margin=0.7)


def test_calibration_follows_a_slower_machine():
    """Batches 3x slower than the table: the adaptive policy learns it and shifts down at a
    load the table alone would serve in the full gear."""
    p = AdaptivePolicy(table(), slo_ms=100, min_dwell_s=0)
    assert p.choose(state(150)) == "full"
    for _ in range(60):
        p.observe("full", 2, 3 * table().gear("full").latency(2) / 1000)
    assert p.scale == pytest.approx(3, rel=0.01)
    assert p.choose(state(150)) != "full"
    plain = AdaptivePolicy(table(), slo_ms=100, min_dwell_s=0, calibration=0.0)
    for _ in range(60):
        plain.observe("full", 2, 3 * table().gear("full").latency(2) / 1000)
    assert plain.choose(state(150)) == "full"
