"""benchmarks/frontier.py: the targets are judged from the rows (synthetic rows here)."""

from __future__ import annotations


def _row(method, setting, engine, score, b1, b32, flops=100.0, threads=1):
    return {
        "task": "mrpc",
        "method": method,
        "setting": setting,
        "engine": engine,
        "score": score,
        "latency_ratio_b1": b1,
        "latency_ratio_b32": b32,
        "flops": flops,
        "threads": threads,
    }


BASE = [
    _row("teacher", "fp32", "eager", 86.0, 1.0, 1.0),
    _row("ort-int8", "fp32", "onnx-int8", 85.8, 0.27, 0.37),
]


def test_target_one_needs_a_close_stack_faster_than_ort_int8_at_both_sizes(load_benchmark):
    frontier = load_benchmark("frontier")
    rows = BASE + [
        _row("stack", "a", "onnx-int8", 85.5, 0.2, 0.3, flops=40.0),
        _row("stack", "b", "onnx-int8", 80.0, 0.1, 0.5, flops=20.0),  # too far from the teacher
    ]
    t1, t2 = frontier.evaluate_targets(rows)
    assert t1["met"] and t1["by"] == "a on onnx-int8"
    # a: 0.3 / 0.4 = 0.75 is within 1.15; b: the worse of b1, b32 (0.5) / 0.2 = 2.5 is not
    assert t2["met"] is False and t2["cause"] == "b on onnx-int8: 2.50"
    slower = BASE + [_row("stack", "a", "onnx-int8", 85.5, 0.2, 0.4, flops=40.0)]
    t1, _ = frontier.evaluate_targets(slower)
    assert not t1["met"] and "0.37" in t1["cause"]
    far = BASE + [_row("stack", "b", "onnx", 80.0, 0.1, 0.1)]
    t1, _ = frontier.evaluate_targets(far)
    assert not t1["met"] and "within 1.0 point" in t1["cause"]


def test_target_two_uses_each_stacks_best_engine(load_benchmark):
    frontier = load_benchmark("frontier")
    rows = BASE + [
        _row("stack", "a", "eager", 86.0, 0.9, 0.9, flops=50.0),  # 1.8 on eager
        _row("stack", "a", "onnx", 86.0, 0.5, 0.55, flops=50.0),  # 1.1 on onnx: within 1.15
    ]
    _, t2 = frontier.evaluate_targets(rows)
    assert t2["met"] and t2["cause"] is None


def test_report_table_shows_threads_engines_and_spreads(load_benchmark):
    report = load_benchmark("report")
    rows = []
    for threads in (1, 2):
        for r in BASE + [_row("stack", "svd+int8", "onnx", 85.9, 0.2, 0.3, flops=50.0)]:
            rows.append(
                dict(
                    r,
                    threads=threads,
                    metric="f1",
                    reference_score=86.0,
                    size_on_disk=2**20 * 29,
                    spread={
                        "b1": [r["latency_ratio_b1"] * 0.9, r["latency_ratio_b1"]],
                        "b32": [r["latency_ratio_b32"], r["latency_ratio_b32"] * 1.1],
                    },
                )
            )
    text = report.frontier_table(rows, {})
    assert text.startswith("#### mrpc (teacher 86.00, f1)")
    assert (
        "| 2 | stack | svd+int8 | onnx | 85.90 | 0.20 (0.18-0.20) | 0.30 (0.30-0.33) | 0.50 | 29 |"
        in text
    )
    assert text.count("| 1 | ") == 3 and text.count("| 2 | ") == 3


def test_a_seed_study_joins_the_results_beside_the_first_run(load_benchmark, tmp_path):
    """frontier.py --seed N scores the first run's stack folders only, and its rows join
    the results file: the first run's rows and targets stay, a re-run of seed N replaces
    seed N's rows; without --stacks-dir it stops with the fix."""
    import json

    import pytest

    frontier = load_benchmark("frontier")
    out = tmp_path / "frontier.json"
    first = [dict(r, task="sst2", seed=None) for r in BASE] + [
        dict(_row("stack", "svdllm2+int8+exits: full", "eager", 85.0, 0.5, 0.5), task="sst2"),
        dict(_row("stack", "int8+plugin: plugins=k4-ffn", "onnx", 84.0, 0.5, 0.5), task="sst2"),
    ]
    targets = [{"task": "sst2", "threads": 1, "target": 1, "met": False, "cause": "x"}]
    out.write_text(json.dumps({"benchmark": "frontier", "rows": first, "targets": targets}))
    assert frontier.first_run_stacks("sst2", out) == {"svdllm2+int8+exits", "int8+plugin"}
    assert frontier.first_run_stacks("mrpc", out) == set()

    def seed_row(seed, score):
        row = _row("stack", "int8+plugin: full", "eager", score, None, None)
        return dict(row, task="sst2", seed=seed, extras={"seed_study": True})

    frontier.merge_seed_rows(out, [seed_row(43, 80.0)])
    frontier.merge_seed_rows(out, [seed_row(44, 81.0)])
    frontier.merge_seed_rows(out, [seed_row(43, 82.0)])  # seed 43 again: replaces its rows
    # seed 42's study sits beside the first run's rows of seed 42, never in their place
    first[2]["seed"] = 42
    data = json.loads(out.read_text())
    data["rows"][2]["seed"] = 42
    out.write_text(json.dumps(data))
    frontier.merge_seed_rows(out, [seed_row(42, 83.0)])
    data = json.loads(out.read_text())
    assert data["targets"] == targets and data["rows"][: len(first)] == first
    assert sorted((r["seed"], r["score"]) for r in data["rows"][len(first) :]) == [
        (42, 83.0),
        (43, 82.0),
        (44, 81.0),
    ]
    with pytest.raises(SystemExit):
        frontier.main(["--tasks", "sst2", "--seed", "43"])
