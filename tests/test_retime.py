"""gearshift.measure.retime: the one timing protocol (quiet, fixed threads, interleaved,
rounds with a spread) and its rows."""

from __future__ import annotations

import sys
import time

import pytest
import torch

from gearshift.errors import ConfigError
from gearshift.measure import retime as rt

FAST = rt.TimingProtocol(warmup=1, repeats=5, rounds=3, max_load=float("inf"))
B1 = {"input_ids": torch.ones(1, 4, dtype=torch.long)}
B32 = {"input_ids": torch.ones(32, 4, dtype=torch.long)}


def _sleeper(ms: float, calls: list | None = None, name: str = ""):
    def run(batch):
        if calls is not None:
            calls.append(name)
        time.sleep(ms / 1000)

    return run


def test_retime_interleaves_candidates_and_gives_a_spread_over_rounds():
    calls: list[str] = []
    candidates = {"ref": _sleeper(4, calls, "ref"), "half": _sleeper(2, calls, "half")}
    batch = {"input_ids": torch.ones(1, 4, dtype=torch.long)}
    got = rt.retime(candidates, {1: batch}, "ref", FAST)[1]
    assert calls[:4] == ["ref", "half", "ref", "half"]  # round-robin, not one then the other
    assert len(calls) == 2 * FAST.rounds * (FAST.warmup + FAST.repeats)
    assert got.ratios["ref"] == 1.0 and len(got.rounds) == FAST.rounds
    assert 0.3 < got.ratios["half"] < 0.8
    lo, hi = got.spread["half"]
    assert lo <= got.ratios["half"] <= hi
    assert got.median_ms["ref"] > got.median_ms["half"]
    with pytest.raises(ConfigError, match="reference 'teacher' is not one of"):
        rt.retime(candidates, {1: batch}, "teacher", FAST)


def test_a_busy_machine_is_refused_unless_the_load_is_recorded(monkeypatch):
    monkeypatch.setattr(rt, "load_per_core", lambda: 0.7)
    strict = rt.TimingProtocol(warmup=0, repeats=1, rounds=1, max_load=0.5)
    with pytest.raises(
        ConfigError, match="not quiet: other processes use 0.70 of each core.*--allow-load"
    ):
        rt.retime({"a": _sleeper(0)}, {1: B1}, "a", strict)
    rows = [{"task": "t", "method": "teacher", "setting": "full", "score": 1.0}]
    out = rt.retime_rows(
        rows,
        rows[0],
        lambda r: _sleeper(0),
        {1: B1},
        command="c",
        protocol=strict,
        allow_load=True,
    )
    assert out[0]["extras"]["retime"]["quiet"] is False
    assert out[0]["extras"]["retime"]["load_per_core"] == 0.7


def test_retime_rows_replaces_ratios_keeps_the_old_ones_and_never_the_score():
    teacher = {
        "task": "sst2",
        "method": "teacher",
        "setting": "full",
        "score": 88.0,
        "latency_ratio_b1": 1.0,
        "latency_ratio_b32": 1.0,
        "extras": {},
    }
    fast = {
        "task": "sst2",
        "method": "m",
        "setting": "k4",
        "score": 80.0,
        "latency_ratio_b1": 0.9,
        "latency_ratio_b32": 0.7,
        "extras": {"keep": 1},
    }
    speed = {"teacher": 4, "m": 2}
    out = rt.retime_rows(
        [teacher, fast],
        teacher,
        lambda r: _sleeper(speed[r["method"]]),
        {1: B1, 32: B32},
        command="python benchmarks/retime.py",
        protocol=FAST,
        machine="test machine",
        date="2026-12-02T00:00:00+00:00",
    )
    t, m = out
    assert (t["latency_ratio_b1"], t["latency_ratio_b32"]) == (1.0, 1.0)
    assert m["score"] == 80.0 and m["extras"]["keep"] == 1
    assert m["extras"]["latency_before_retime"] == {
        "latency_ratio_b1": 0.9,
        "latency_ratio_b32": 0.7,
    }
    rec = m["extras"]["retime"]
    assert rec["ratio_b32"] == m["latency_ratio_b32"] and 0.3 < rec["ratio_b32"] < 0.8
    lo, hi = rec["ratio_b32_spread"]
    assert lo <= rec["ratio_b32"] <= hi
    assert rec["protocol"]["rounds"] == 3 and rec["protocol"]["threads"] == 1
    assert rec["command"] == "python benchmarks/retime.py" and rec["machine"] == "test machine"
    assert fast["latency_ratio_b32"] == 0.7 and "retime" not in fast["extras"]  # copies
    with pytest.raises(ConfigError, match="two rows of one"):
        rt.retime_rows(
            [fast, fast], teacher, lambda r: _sleeper(0), {1: B1}, command="c", protocol=FAST
        )


def test_protocol_settings_are_checked():
    with pytest.raises(ConfigError, match="TimingProtocol.rounds must be an integer >= 1"):
        rt.TimingProtocol(rounds=0)
    with pytest.raises(ConfigError, match="max_load must be > 0"):
        rt.TimingProtocol(max_load=0)
    assert rt.TimingProtocol().threads == 1  # fixed threads by default


def test_retime_script_reloads_saved_models_and_writes_the_protocol(
    tmp_path, monkeypatch, capsys, hf_tiny_dir, load_benchmark
):
    """benchmarks/retime.py on a results file whose rows name saved tiny models: the rows
    with their artifact get the protocol's ratio and spread, the others are listed with
    the command that rebuilds them, and no score changes."""
    from conftest import random_batch

    from gearshift.measure.report import ResultsSink
    from gearshift.runtime import load_pretrained, save_model

    script = load_benchmark("retime")
    model = load_pretrained(str(hf_tiny_dir("bert", "classification")))
    save_model(model, tmp_path / "cache" / "sst2" / "best")  # the teacher to time against
    student = save_model(model, tmp_path / "runs" / "student")
    sink = ResultsSink(tmp_path / "steps.json", "steps")

    def row(method, folder, score):
        extras = {"model_dir": str(folder)} if folder else {}
        return {
            "task": "sst2",
            "model": "m",
            "method": method,
            "setting": "s",
            "metric": "accuracy",
            "score": score,
            "latency_ratio_b1": 0.9,
            "latency_ratio_b32": 0.8,
            "command": f"python benchmarks/steps.py {method}",
            "extras": extras,
        }

    sink.add(
        [
            row("teacher", None, 88.0),
            row("student", student, 80.0),
            row("gone", tmp_path / "runs" / "gone", 70.0),
        ]
    )
    monkeypatch.setattr(script, "RESULTS", tmp_path)
    monkeypatch.setattr(script, "teacher_dir", lambda task: tmp_path / "cache" / task)
    monkeypatch.setattr(script, "load_tokenizer", lambda path: None)
    monkeypatch.setattr(script, "dev_texts", lambda task, limit: ["x"])
    monkeypatch.setattr(script, "make_batch", lambda tok, texts, n: random_batch("bert", n, 7))
    args = [
        "steps",
        "--tasks",
        "sst2",
        "--warmup",
        "0",
        "--repeats",
        "2",
        "--rounds",
        "2",
        "--max-load",
        "1000",
    ]
    assert script.main(args) == 0
    out = capsys.readouterr().out
    assert "1 with their artifact here, 1 without" in out
    assert "gone | s:" in out and "rebuild: `python benchmarks/steps.py gone`" in out
    rows = {r["method"]: r for r in ResultsSink(tmp_path / "steps.json", "steps").rows}
    rec = rows["student"]["extras"]["retime"]
    assert rows["student"]["latency_ratio_b32"] == rec["ratio_b32"]
    assert rec["ratio_b32_spread"][0] <= rec["ratio_b32"] <= rec["ratio_b32_spread"][1]
    assert rows["student"]["extras"]["latency_before_retime"]["latency_ratio_b32"] == 0.8
    assert rows["student"]["score"] == 80.0 and rows["gone"]["latency_ratio_b32"] == 0.8
    assert rows["teacher"]["latency_ratio_b32"] == 1.0
    assert script.main(["plugins", "--tasks", "sst2"]) == 2  # plugins re-time themselves


def test_steps_benchmark_retime_flag_hands_over_to_the_shared_protocol(load_benchmark, monkeypatch):
    steps = load_benchmark("steps")
    seen = {}
    fake = type(sys)("retime")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "retime", fake)
    assert steps.main(["encoders", "--tasks", "rte", "sst2", "--retime", "--quick"]) == 0
    assert seen["argv"] == ["steps", "--tasks", "rte", "sst2", "--threads", "1", "--quick"]


def test_load_counts_other_processes_not_this_one(monkeypatch):
    """load_per_core reads the machine's CPU counters over a sample and leaves out this
    process's own use (a benchmark that was scoring a moment ago is not "load")."""
    import collections

    import psutil

    Times = collections.namedtuple("Times", "user system idle iowait")
    Own = collections.namedtuple("Own", "user system")
    # 2 cores, a 1 s sample: 2 s of CPU time in all; 1.5 s busy, of which 1.0 s is ours
    machine = iter([Times(100.0, 10.0, 50.0, 0.0), Times(101.2, 10.3, 50.5, 0.0)])
    ours = iter([Own(5.0, 1.0), Own(5.9, 1.1)])
    monkeypatch.setattr(psutil, "cpu_times", lambda: next(machine))

    class Me:
        def cpu_times(self):
            return next(ours)

    monkeypatch.setattr(psutil, "Process", Me)
    assert rt.load_per_core(sample_s=0.0) == pytest.approx(0.25)  # 0.5 s of others' / 2 s
    machine = iter([Times(0.0, 0.0, 0.0, 0.0), Times(0.0, 0.0, 2.0, 0.0)])
    ours = iter([Own(0.0, 0.0), Own(0.0, 0.0)])
    assert rt.load_per_core(sample_s=0.0) == 0.0  # an idle machine
