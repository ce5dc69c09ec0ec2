"""`gearshift tune` on a tiny model: candidates measured on real dev sentences, cached,
and the best point under a budget chosen by the documented rule."""

from __future__ import annotations

import json

import onnxruntime  # noqa: E402,F401  (a hard dependency: a missing one fails, never skips)
import pytest

from gearshift.engine.tune import (  # noqa: E402
    frontier,
    parse_budgets,
    select_best,
    within,
)
from gearshift.errors import ConfigError  # noqa: E402


def _row(name, score, b1, b32=None, flops=1.0, size=1.0, ref=90.0):
    return {
        "name": name,
        "score": score,
        "reference_score": ref,
        "latency_ratio_b1": b1,
        "latency_ratio_b32": b1 if b32 is None else b32,
        "flops_ratio": flops,
        "size_ratio": size,
    }


ROWS = [
    _row("teacher", 90.0, 1.0),
    _row("ort-int8", 89.5, 0.3, 0.4, size=0.3),
    _row("svd-2", 89.8, 0.6, 0.7, flops=0.55, size=0.6),
    _row("svd-4-int8", 87.0, 0.2, 0.25, flops=0.3, size=0.2),
    _row("slow-tie", 89.5, 0.45, 0.45, size=0.3),
]


def test_select_best_is_highest_score_inside_every_budget():
    assert select_best(ROWS, {"latency": 0.5})["name"] == "ort-int8"  # ties -> faster b1
    assert select_best(ROWS, {"flops": 0.6})["name"] == "svd-2"
    assert select_best(ROWS, {"latency": 0.5, "size": 0.25})["name"] == "svd-4-int8"
    assert select_best(ROWS, {"drop": 0.1})["name"] == "teacher"
    assert select_best(ROWS, {"latency": 0.1}) is None
    # latency bounds both batch sizes
    assert not within(_row("x", 90, 0.4, 0.6), {"latency": 0.5})


def test_frontier_drops_dominated_points():
    names = [r["name"] for r in frontier(ROWS)]
    assert names == ["svd-4-int8", "ort-int8", "svd-2", "teacher"]


def test_parse_budgets_names_the_problem():
    assert parse_budgets(["latency=0.5", "drop=1"]) == {"latency": 0.5, "drop": 1.0}
    with pytest.raises(ConfigError, match="latency"):
        parse_budgets(["speed=2"])
    with pytest.raises(ConfigError, match="not a number"):
        parse_budgets(["flops=half"])


@pytest.fixture
def tiny_teacher(tmp_path, load_benchmark):
    """A tiny random BERT with the MiniLM tokenizer (so it reads real sentences), the one
    benchmarks/frontier.py --quick uses."""
    from gearshift.data import get_task

    return load_benchmark("frontier").tiny_teacher(tmp_path / "teacher", get_task("sst2"))


def test_tune_quick_picks_the_documented_best_and_resumes(tiny_teacher, tmp_path):
    from gearshift.cli import main

    out = tmp_path / "tune"
    argv = [
        "tune",
        "--model",
        str(tiny_teacher),
        "--task",
        "sst2",
        "--budget",
        "flops=0.9",
        "--output",
        str(out),
        "--quick",
        "--limit",
        "24",
        "--no-progress",
    ]
    assert main(argv) == 0
    result = json.loads((out / "frontier.json").read_text())
    rows = result["rows"]
    names = {r["name"] for r in rows}
    assert {"teacher-eager", "teacher-onnx", "teacher-onnx-int8", "torch-int8"} <= names
    assert {"svd-r2-eager", "svd-r2-onnx", "svd-r2-onnx-int8"} <= names
    best = result["best"]
    assert best == select_best(rows, {"flops": 0.9})
    assert best["method"] == "factorize-svd" and best["flops_ratio"] <= 0.9
    assert (out / "frontier.png").is_file()
    tune_json = json.loads((out / "best" / "tune.json").read_text())
    assert tune_json["row"]["name"] == best["name"]
    # the teacher on ONNX Runtime fp32 scores what the teacher scores
    by = {r["name"]: r for r in rows}
    assert by["teacher-onnx"]["score"] == pytest.approx(by["teacher-eager"]["score"])
    # resumable: a second run measures nothing again (rows come from the cache)
    stamp = {
        n: (out / "candidates" / n / "row.json").stat().st_mtime_ns
        for n in names - {"teacher-eager"}
    }
    assert main(argv) == 0
    assert stamp == {n: (out / "candidates" / n / "row.json").stat().st_mtime_ns for n in stamp}


def test_evaluate_and_predict_take_an_engine(tiny_teacher, tmp_path, capsys):
    from gearshift.cli import main

    scores = {}
    for name in ("eager", "onnx"):
        out = tmp_path / f"{name}.json"
        argv = ["evaluate", "--model", str(tiny_teacher), "--task", "sst2", "--limit", "24"]
        assert main([*argv, "--engine", name, "--json", str(out), "--no-progress"]) == 0
        result = json.loads(out.read_text())
        assert result["engine"] == name
        scores[name] = result["score"]
    assert scores["onnx"] == pytest.approx(scores["eager"])
    texts = tmp_path / "texts.txt"
    texts.write_text("a gorgeous film\na waste of time\n")
    capsys.readouterr()
    assert (
        main(
            [
                "predict",
                "--model",
                str(tiny_teacher),
                "--input",
                str(texts),
                "--engine",
                "onnx-int8",
            ]
        )
        == 0
    )
    lines = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    assert len(lines) == 2 and all("label" in row for row in lines)


def test_tune_measures_a_stacks_settings_on_every_engine(tiny_teacher, tmp_path, load_benchmark):
    from gearshift.api import load
    from gearshift.compose.io import save_stack
    from gearshift.engine.tune import tune

    teacher = load(tiny_teacher)
    stack = load_benchmark("frontier").tiny_stack(teacher)
    folder = save_stack(stack, tmp_path / "stack", tokenizer=teacher.tokenizer)
    result = tune(
        str(folder),
        "sst2",
        tmp_path / "tune",
        {"drop": 100.0},
        limit=16,
        warmup=0,
        repeats=1,
        progress=False,
    )
    rows = {r["name"]: r for r in result["rows"]}
    for engine in ("eager", "onnx", "onnx-int8"):
        assert f"stack-plugins=k2-{engine}" in rows
        assert f"stack-exits=entropy:0.5-{engine}" in rows
    # the plugin halves the FFN's tokens: fewer FLOPs than the teacher
    assert rows["stack-plugins=k2-eager"]["flops_ratio"] < 1.0
    # segments give the eager stack's predictions
    assert rows["stack-exits=entropy:0.5-onnx"]["score"] == pytest.approx(
        rows["stack-exits=entropy:0.5-eager"]["score"]
    )
    assert result["best"]["score"] == max(r["score"] for r in result["rows"])


def test_profile_reports_the_engines_latency_against_eager(tiny_teacher, tmp_path):
    from gearshift.cli import main

    out = tmp_path / "profile.json"
    argv = ["profile", "--model", str(tiny_teacher), "--task", "sst2", "--limit", "8"]
    assert (
        main([*argv, "--engine", "onnx", "--threads", "1", "--json", str(out), "--no-progress"])
        == 0
    )
    result = json.loads(out.read_text())["engine"]
    assert result["engine"] == "onnx" and result["threads"] == 1
    assert result["ratio_b1"] > 0 and result["ratio_b32"] > 0
