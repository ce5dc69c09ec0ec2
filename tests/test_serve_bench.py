"""benchmarks/serve.py's trace and its per-policy numbers, on synthetic records."""

from __future__ import annotations

import pytest


def test_poisson_trace_is_bounded_and_follows_the_load(load_benchmark):
    bench = load_benchmark("serve")
    trace = bench.poisson_trace(200.0, [0.5, 3, 0.5], 5.0, 100_000, seed=0)
    counts = {m: sum(1 for _, x in trace if x == m) for m in (0.5, 3)}
    assert counts[3] == pytest.approx(3000, rel=0.1)  # 600/s for 5 s
    assert counts[0.5] == pytest.approx(1000, rel=0.15)  # 100/s for 2 x 5 s
    assert all(a < b for (a, _), (b, _) in zip(trace, trace[1:]))
    assert max(t for t, _ in trace) < 15.0
    assert len(bench.poisson_trace(200.0, [3], 5.0, 50, seed=0)) == 50
    assert bench.poisson_trace(200.0, [1], 1.0, 10_000, 1) == bench.poisson_trace(
        200.0, [1], 1.0, 10_000, 1
    )


def test_summary_counts_against_all_sent(load_benchmark):
    bench = load_benchmark("serve")

    def rec(status, ms=None, correct=None, t=0.0, gear="full"):
        r = {"t": t, "status": status, "latency_ms": ms, "send_lag_ms": 0.0}
        if status == 200:
            r.update(gear=gear, correct=correct)
        return r

    records = [
        rec(200, 50, True),  # correct, in time
        rec(200, 80, False),  # wrong, in time
        rec(200, 300, True, gear="k4"),  # correct, late
        rec(429, 1),
        rec(504, 1000),
    ]
    s = bench.summarize(records, slo_ms=100, seconds=2.0)
    assert s["sent"] == 5 and s["answered"] == 3
    assert s["slo_attainment"] == pytest.approx(2 / 5)
    assert s["goodput"] == pytest.approx(1.0)
    assert s["share_429"] == pytest.approx(0.2)
    assert s["share_other_errors"] == pytest.approx(0.2)
    assert s["accuracy_answered"] == pytest.approx(200 / 3)
    assert s["effective_accuracy"] == pytest.approx(20.0)  # 1 correct in time of 5 sent
    assert s["p99_ms"] == 300 and s["p50_ms"] == 80
    assert s["gears"] == {"full": 2, "k4": 1}
    series = bench.per_second(records + [rec(200, 10, True, t=1.5, gear="k4")], ["full", "k4"])
    assert [b["arrivals"] for b in series] == [5, 1]
    assert [b["gear"] for b in series] == ["full", "k4"]


def row(policy, load, slo, acc, eff, **more):
    """A synthetic result row of one policy at one load step."""
    return {
        "policy": policy,
        "load_multiplier": load,
        "sent": 100,
        "slo_attainment": slo,
        "goodput": 10.0,
        "p50_ms": 5.0,
        "p99_ms": 50.0,
        "share_429": 0.0,
        "accuracy_answered": acc,
        "effective_accuracy": eff,
        **more,
    }


def test_verdicts_on_synthetic_rows(load_benchmark):
    bench = load_benchmark("serve")

    good = [
        row("adaptive", 0.5, 1.0, 91.0, 91.0),
        row("adaptive", 3, 0.995, 88.0, 87.5),
        row("adaptive", "trace", 0.99, 89.0, 88.0),
        row("static-full", 0.5, 1.0, 91.1, 91.1),
        row("static-full", 3, 0.40, 91.0, 36.0),
        row("static-full", "trace", 0.7, 91.0, 64.0),
        row("static-fastest", "trace", 1.0, 85.0, 85.0),
    ]
    assert [met for _, met, _ in bench.verdicts(good)] == [True, True, True]
    bad = [dict(r) for r in good]
    bad[0]["accuracy_answered"] = 90.5  # 0.6 points below static-full at 0.5x
    bad[1]["slo_attainment"] = 0.98
    bad[6]["effective_accuracy"] = 88.5
    assert [met for _, met, _ in bench.verdicts(bad)] == [False, False, False]
    assert [met for _, met, _ in bench.verdicts(good[:3])] == [None, None, None]
    text = bench.markdown_section(good)
    assert "| adaptive | 3 | 100 | 0.995 |" in text and text.count("**met**") == 3


def test_client_check_marks_a_late_client_invalid(load_benchmark):
    bench = load_benchmark("serve")
    on_time = [{"send_lag_ms": 0.5} for _ in range(200)]
    ok = bench.client_check(on_time, cpu_s=2.0, wall_s=10.0, lag_ms=5.0)
    assert ok["valid"] and ok["client_cpu_share"] == pytest.approx(0.2)
    late = on_time[:190] + [{"send_lag_ms": 40.0} for _ in range(10)]  # 5% sent 40 ms late
    bad = bench.client_check(late, cpu_s=9.5, wall_s=10.0, lag_ms=5.0)
    assert not bad["valid"] and bad["send_lag_p99_ms"] == 40.0 and bad["send_lag_max_ms"] == 40.0


def test_invalid_runs_get_no_verdict(load_benchmark):
    bench = load_benchmark("serve")

    rows = [
        row("adaptive", 3, 0.995, 88.0, 87.5, valid=False, client={"send_lag_p99_ms": 80.0}),
        row("static-full", 3, 0.40, 91.0, 36.0),
    ]
    assert [met for _, met, _ in bench.verdicts(rows)][0] is None
    assert "80.0 (invalid)" in bench.markdown_section(rows)


def test_load_generator_sends_on_time_against_a_real_server(load_benchmark, tmp_path):
    """The aiohttp open loop against a tiny loopback server: every request answered, the
    records carry lateness, and the client check reads them."""
    import asyncio
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bench = load_benchmark("serve")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["content-length"]))
            import json

            text = json.loads(body)["texts"][0]
            out = json.dumps({"predictions": [{"label": text, "gear": "full"}]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"

        class Ex:
            def __init__(self, text, label):
                self.text_a, self.label = text, label

        examples = [Ex("negative", 0), Ex("positive", 1), Ex("wrong", 0)]
        trace = bench.poisson_trace(100.0, [1], 1.0, 200, seed=0)
        cpu0, wall0 = time.process_time(), time.monotonic()
        records = asyncio.run(
            bench.run_trace(url, trace, examples, ["negative", "positive"], timeout_s=10)
        )
        check = bench.client_check(
            records, time.process_time() - cpu0, time.monotonic() - wall0, lag_ms=50.0
        )
    finally:
        server.shutdown()
    assert len(records) == len(trace) and all(r["status"] == 200 for r in records)
    assert [r["correct"] for r in records[:3]] == [True, True, False]
    assert check["valid"] and 0 < check["client_cpu_share"] < 1


def test_cpus_split_between_server_and_client(load_benchmark, monkeypatch):
    import os

    bench = load_benchmark("serve")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert bench.split_cpus(None, None) == ({0, 1, 2}, {3})
    assert bench.split_cpus("0", "1,2") == ({0}, {1, 2})
    assert bench.split_cpus("all", "all") == ({0, 1, 2, 3}, {0, 1, 2, 3})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert bench.split_cpus(None, None) == ({0}, {0})  # one core: nothing to split


def test_the_3x_verdict_names_the_fastest_gears_headroom(load_benchmark):
    bench = load_benchmark("serve")
    rows = [
        row(
            "adaptive",
            3,
            0.4,
            90.0,
            10.0,
            capacity_full=90.0,
            capacity_fastest=200.0,
            fastest_gear="int8",
        ),
        row("static-full", 3, 0.0, 90.0, 10.0),
    ]
    claim, met, nums = bench.verdicts(rows)[0]
    assert met is False and "int8" in nums and "2.22x" in nums and "no policy can carry 3x" in nums
