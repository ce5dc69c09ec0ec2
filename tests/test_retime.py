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
    # --settings keeps only the rows named (and the teacher, the reference)
    assert script.main(["steps", "--tasks", "sst2", "--quick", "--settings", "other"]) == 0
    assert "sst2: 1 timed rows, 0 with their artifact here, 0 without" in capsys.readouterr().out


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


def test_stand_ins_retime_rows_whose_model_is_gone_and_check_their_shapes(
    monkeypatch, capsys, tmp_path, hf_tiny_dir, load_benchmark
):
    """retime.py --stand-in on steps rows with no saved model: each row is rebuilt with its
    shapes by steps.stand_in from the pre-trained model, checked against the row's
    parameters, timed by the protocol (with the stand-in note and a spread); rows of one
    arithmetic are timed once (``timed_as``); a row whose shapes do not match, and one the
    script cannot rebuild, keep their latency and are listed."""
    from pathlib import Path

    from conftest import random_batch

    from gearshift.measure import count_parameters
    from gearshift.measure.report import ResultsSink
    from gearshift.runtime import load_pretrained

    script = load_benchmark("retime")
    monkeypatch.syspath_prepend(str(Path(script.__file__).parent))  # stand_in's benchmark
    base = load_pretrained(str(hf_tiny_dir("bert", "classification"))).eval()
    params = count_parameters(base)

    def row(method, setting, **extras):
        return {
            "task": "sst2",
            "model": "m",
            "method": method,
            "setting": setting,
            "metric": "accuracy",
            "score": 80.0,
            "params": extras.pop("params", params),
            "latency_ratio_b1": 0.9,
            "latency_ratio_b32": 0.8,
            "command": f"python benchmarks/steps.py {method}",
            "extras": {"model_dir": "runs/steps/gone/sst2/best", **extras},
        }

    sink = ResultsSink(tmp_path / "steps.json", "steps")
    sink.add(
        [
            row("teacher", "unshared"),
            row("teacher-drop-first", "N=1", block_evaluations=1),
            row("unshared-finetuned", "unshared", block_evaluations=2),
            row("scratch-finetuned", "wrong", params=params + 1),
            row("decoder", "gpt"),
        ]
    )
    monkeypatch.setattr(script, "RESULTS", tmp_path)
    monkeypatch.setattr(script, "base_model", lambda task: base)
    monkeypatch.setattr(script, "load_tokenizer", lambda path: None)
    monkeypatch.setattr(script, "dev_texts", lambda task, limit: ["x"])
    monkeypatch.setattr(script, "make_batch", lambda tok, texts, n: random_batch("bert", n, 7))
    quick = ["--warmup", "0", "--repeats", "2", "--rounds", "2", "--max-load", "1000"]
    assert script.main(["steps", "--tasks", "sst2", "--stand-in", *quick]) == 0
    out = capsys.readouterr().out
    assert "stand-ins: 3 rows re-timed, 2 left alone" in out
    assert f"stand-in has {params} parameters, the row {params + 1}" in out
    assert "decoder | gpt: no stand-in" in out
    rows = {r["method"]: r for r in ResultsSink(tmp_path / "steps.json", "steps").rows}
    cut = rows["teacher-drop-first"]
    rec = cut["extras"]["retime"]
    assert "same-shape stand-in" in rec["stand_in"] and "timed_as" not in rec
    assert cut["latency_ratio_b32"] == rec["ratio_b32"] != 0.8
    assert rec["ratio_b32_spread"][0] <= rec["ratio_b32"] <= rec["ratio_b32_spread"][1]
    twin = rows["unshared-finetuned"]  # the teacher's arithmetic: timed as the teacher
    assert twin["extras"]["retime"]["timed_as"] == "teacher | unshared"
    assert twin["latency_ratio_b32"] == 1.0
    assert twin["extras"]["latency_before_retime"]["latency_ratio_b32"] == 0.8
    for kept in ("scratch-finetuned", "decoder"):
        assert rows[kept]["latency_ratio_b32"] == 0.8 and "retime" not in rows[kept]["extras"]
    assert script.main(["compose", "--tasks", "sst2", "--stand-in"]) == 2  # not a stand-in one


@pytest.mark.parametrize("bench", ["factorize", "slim", "plugins"])
def test_benchmark_stand_ins_have_the_rows_shapes(bench, monkeypatch, hf_tiny_dir):
    """factorize's, slim's and plugins' stand_in rebuild a row's shapes from the pre-trained
    model alone (the rows' recorded settings); rows with exits get none."""
    import copy
    import importlib
    from pathlib import Path

    from gearshift.measure import count_parameters
    from gearshift.runtime import load_pretrained

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    module = importlib.import_module(bench)  # as retime.py imports it (its dataclasses need it)
    base = load_pretrained(str(hf_tiny_dir("bert", "classification"))).eval()
    if bench == "factorize":
        from gearshift.methods.factorize import FactorizeConfig, compress

        want, _ = compress(
            copy.deepcopy(base), FactorizeConfig(method="svd", ratio=2.0, progress=False)
        )
        row = {
            "method": "svdllm",
            "extras": {"factorize_method": "svdllm", "target_ratio": 2.0, "mode": "per-layer"},
        }
        model, plan = module.stand_in(row, base)
        assert count_parameters(model) == count_parameters(want) < count_parameters(base)
        row["extras"]["finetune_form"] = "dense"
        assert count_parameters(module.stand_in(row, base)[0]) == count_parameters(base)
    elif bench == "plugins":
        from gearshift.methods.plugins import Plugin, PluginConfig

        want = Plugin(PluginConfig(k=2, placement="ffn", keep_first_token=True, bottleneck=8), base)
        model, plan = module.stand_in({"method": "plugin", "setting": "k2-ffn-cls-r8"}, base)
        assert count_parameters(model) == count_parameters(base) + count_parameters(want)
        assert plan.ffn_wrap  # the plugin runs through the plan
        mean = module.stand_in({"method": "mean-merging", "setting": "k2-ffn-mean"}, base)
        assert count_parameters(mean[0]) == count_parameters(base) and mean[1].ffn_wrap
        assert module.stand_in({"method": "plugin", "setting": "k4-odd"}, base) is None
    else:
        heads = base.config.layer_shape(0).num_heads
        row = {"method": "static-A", "extras": {"widths": f"heads {heads - 1}, ffn 8"}}
        model, plan = module.stand_in(row, base)
        assert model.config.layer_shape(0).num_heads == heads - 1
        assert model.config.layer_shape(0).intermediate_size == 8 and plan is None
        assert module.stand_in({"method": "cost-eff-A", "extras": {}}, base) is None
        cut = module.stand_in({"method": "truncated-1", "extras": {}}, base)[0]
        assert cut.config.num_layers == 1


def test_a_known_change_of_the_flops_count_is_recounted_and_others_refused(
    monkeypatch, hf_tiny_dir
):
    """A -cls plugin row counted before the restorer ran its adapter on the kept first token
    passes the stand-in check with its FLOPs moved by exactly 4*d*r per covered layer (the old
    count kept); any other difference, or the same difference on a later row, is refused."""
    import copy
    import importlib
    from pathlib import Path

    import gearshift.measure
    from gearshift.runtime import load_pretrained

    real = gearshift.measure.flops_at_length

    def flops_at_length(model, n, plan=None):  # the tiny model has 64 positions, not 128
        return real(model, 32, plan=plan)

    monkeypatch.setattr(gearshift.measure, "flops_at_length", flops_at_length)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    module = importlib.import_module("plugins")
    retime = importlib.import_module("retime")
    base = load_pretrained(str(hf_tiny_dir("bert", "classification"))).eval()
    model, plan = module.stand_in({"method": "plugin", "setting": "k2-ffn-cls-r8"}, base)
    now = flops_at_length(model, 128, plan=plan)
    c = base.config
    delta = 4 * c.hidden_size * 8 * c.num_layers
    old = {
        "method": "plugin",
        "setting": "k2-ffn-cls-r8",
        "date": "2026-11-22T09:10:46+00:00",
        "params": None,
        "flops_128": now - delta,
        "flops_dynamic": 1000.0 - delta,
        "extras": {"saved_flops_128": 0.5, "saved_flops_dynamic": 0.25},
    }
    first = copy.deepcopy(old)
    got_model, _, why = retime.build_stand_in(module, old, base)
    assert got_model is not None and why == ""
    row = retime.recounted(old)
    assert row["flops_128"] == now and row["flops_dynamic"] == 1000.0
    assert row["extras"]["flops_recount"]["before"]["flops_128"] == now - delta
    assert "edab1aa" in row["extras"]["flops_recount"]["reason"]
    teacher_128 = (now - delta) / 0.5
    assert row["extras"]["saved_flops_128"] == pytest.approx(1 - now / teacher_128)
    assert "_recount" not in row
    for changed in ({"flops_128": now - delta - 1}, {"date": "2026-11-23T00:00:00+00:00"}):
        bad = {**copy.deepcopy(first), **changed}
        assert retime.build_stand_in(module, bad, base)[0] is None
    nocls = {**copy.deepcopy(first), "setting": "k2-ffn-r8"}
    assert retime.build_stand_in(module, nocls, base)[0] is None


def test_plugin_stand_ins_of_one_size_but_other_arithmetic_are_timed_apart(
    monkeypatch, hf_tiny_dir
):
    """Plugins of one parameter count at another placement, k or first-token rule, and the
    training-free baselines, each get their own timing (``arithmetic`` keys on what the
    plan's wraps run and the FLOPs); a KL-trained plugin shares its plain twin's."""
    import importlib
    from pathlib import Path

    from gearshift.runtime import load_pretrained

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    module = importlib.import_module("plugins")
    retime = importlib.import_module("retime")
    base = load_pretrained(str(hf_tiny_dir("bert", "classification"))).eval()
    rows = [
        ("plugin", "k2-ffn"),
        ("plugin", "k2-layer"),
        ("plugin", "k2-ffn-cls"),
        ("plugin", "k4-ffn"),
        ("plugin", "k2-ffn+kl"),
        ("mean-merging", "k2-ffn-mean"),
        ("truncation", "k2-truncate"),
    ]
    keys = {}
    for method, setting in rows:
        model, plan = module.stand_in({"method": method, "setting": setting}, base)
        keys[setting] = retime.arithmetic(model, plan)
    assert keys["k2-ffn+kl"] == keys["k2-ffn"]
    distinct = [k for s, k in keys.items() if s != "k2-ffn+kl"]
    assert len(set(distinct)) == len(distinct)


def test_a_steps_seed_study_trains_apart_and_keeps_the_setting_name(load_benchmark):
    """steps.py --seed 43 trains into *-s43 folders while its rows keep the variant's name
    (so the report averages seeds of one setting); the default seed keeps the old folders."""
    steps = load_benchmark("steps")
    args = steps.parse_args(["encoders", "--groups", "2", "--seed", "43"])
    assert steps.encoder_variant(2, "naive", args) == "shared-g2-naive-ln"
    assert steps.encoder_folder(2, "naive", args) == "shared-g2-naive-ln-s43"
    default = steps.parse_args(["encoders", "--groups", "2"])
    assert default.seed == 42 and steps.encoder_folder(2, "naive", default) == "shared-g2-naive-ln"
    assert steps.distil_config(args, steps.Path("x"), 10).seed == 43


def test_steps_seed_study_references_fine_tune_apart_with_the_seed_untimed(
    tmp_path, load_benchmark, monkeypatch
):
    """--study-references: the references fine-tuned like the shared models are re-run with
    the study's seed into *-s<seed> folders, carry that seed, and are not timed; at seed 42
    they keep their folders and are timed against the teacher."""
    steps = load_benchmark("steps")
    tuned = []

    def finetune(model, name, sizes, task, args):
        tuned.append((name, args.seed))
        return tmp_path / name

    class Timer:
        calls = 0

        def ratios(self, fns, reference):
            Timer.calls += 1
            return {1: {n: 0.5 for n in fns}, 32: {n: 0.4 for n in fns}}

    def row(method, setting, model, plan, score, ref, extras, seed=None):
        lat = {k: extras.pop(k, None) for k in ("latency_ratio_b1", "latency_ratio_b32")}
        return {"method": method, "setting": setting, "seed": seed, "extras": extras, **lat}

    monkeypatch.setattr(steps, "_finetune", finetune)
    monkeypatch.setattr(steps, "load_pretrained", lambda path: torch.nn.Identity())
    monkeypatch.setattr(steps, "forward_fn", lambda model, plan=None: None)
    monkeypatch.setattr(steps, "cut_pretrained", lambda n, args: tmp_path / f"cut{n}")
    monkeypatch.setattr(steps, "limits_training", lambda task, limit: True)
    task = steps.get_task("sst2")
    argv = ["encoders", "--tasks", "sst2", "--train-limit", "100"]

    def scored(model, plan=None):
        return 80.0, {}

    study = steps.parse_args(argv + ["--seed", "43", "--study-references"])
    rows = steps.reference_rows(task, study, 6, 88.0, Timer(), scored, row, True)
    assert tuned == [("unshared-s43", 43), ("unshared-cut3-s43", 43)]
    assert [r["method"] for r in rows] == ["unshared-finetuned", "unshared-cut-finetuned"]
    assert Timer.calls == 0 and all(r["latency_ratio_b32"] is None for r in rows)
    assert all(r["seed"] == 43 and r["extras"]["teacher_independent"] for r in rows)
    assert all("seed study (seed 43)" in r["extras"]["timing"]["how"] for r in rows)
    assert (
        rows[1]["setting"]
        == "N=3: first 3 layers of the pre-trained model, fine-tuned on 100 examples"
    )

    tuned.clear()
    default = steps.parse_args(argv)
    rows = steps.reference_rows(task, default, 6, 88.0, Timer(), scored, row, False, object())
    assert tuned == [("unshared", 42), ("unshared-cut3", 42)]
    assert Timer.calls == 2 and all(r["latency_ratio_b32"] == 0.4 for r in rows)
    assert all(r["seed"] == 42 and "timing" not in r["extras"] for r in rows)
