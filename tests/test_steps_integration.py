"""Step-size acceleration on the real MiniLM-L6 checkpoint and real data, through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from gearshift.cli import main
from gearshift.methods.steps import step_plan
from gearshift.runtime import load_pretrained

pytestmark = pytest.mark.integration


def test_share_finetune_and_eval_through_the_cli(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"sentence number {i} about shared layers." for i in range(40)))
    shared = tmp_path / "shared"
    args = [
        "share",
        "--model",
        "minilm-l6",
        "--output",
        str(shared),
        "--groups",
        "2",
        "--text",
        str(text),
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--max-length",
        "16",
        "--step-sizes",
        "1",
        "2",
        "3",
        "--layerwise",
        "--no-progress",
        "--eval-texts",
        "4",
        "--eval-every",
        "2",
    ]
    assert main(args) == 0
    folder = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model"]
    logged = [json.loads(line) for line in (shared / "log.jsonl").read_text().splitlines()]
    fidelity = [r for r in logged if r.get("kind") == "eval"]
    assert [r["step"] for r in fidelity][:1] == [2]  # every 2 steps (and at the end)
    assert all(0.0 < r["cos_a1"] <= 1.0 and r["mse_a2"] > 0.0 for r in fidelity)
    model = load_pretrained(folder)
    assert model.config.layer_to_block == [0, 0, 0, 1, 1, 1] and len(model.blocks) == 2
    teacher = load_pretrained("minilm-l6")
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    # distilled for 3 steps from the mean: close to the teacher, not equal to it
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(
            model(ids).last_hidden_state, teacher(ids).last_hidden_state, dim=-1
        )
    assert 0.3 < float(cos.mean()) < 0.9999

    tuned = tmp_path / "tuned"
    assert (
        main(
            [
                "steps",
                "finetune",
                "--model",
                folder,
                "--task",
                "rte",
                "--output",
                str(tuned),
                "--train-limit",
                "16",
                "--dev-limit",
                "16",
                "--max-steps",
                "2",
                "--batch-size",
                "8",
                "--step-sizes",
                "1",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"model", "accuracy"}

    rows_file = tmp_path / "rows.json"
    assert (
        main(
            [
                "steps",
                "eval",
                "--model",
                out["model"],
                "--steps",
                "6",
                "3",
                "2",
                "--solver",
                "euler",
                "heun",
                "--limit",
                "16",
                "--json",
                str(rows_file),
            ]
        )
        == 0
    )
    rows = json.loads(rows_file.read_text())
    assert [(r["steps"], r["solver"]) for r in rows] == [
        (6, "euler"),
        (3, "euler"),
        (2, "euler"),
        (6, "heun"),
        (3, "heun"),
        (2, "heun"),
    ]
    flops = {(r["steps"], r["solver"]): r["flops_128"] for r in rows}
    assert flops[(3, "euler")] < flops[(6, "euler")] and flops[(2, "heun")] > flops[(2, "euler")]
    assert all(r["metric"] == "accuracy" and 0 <= r["score"] <= 100 for r in rows)
    assert rows[1]["step_sizes"] == [1.5, 1.5, 3.0]  # 2 groups of 3 layers in 3 steps


def test_decoder_pretrains_and_scores_perplexity(tmp_path, capsys):
    out = tmp_path / "dec"
    assert (
        main(
            [
                "steps",
                "decoder",
                "--output",
                str(out),
                "--groups",
                "1",
                "--max-steps",
                "2",
                "--batch-size",
                "2",
                "--block-size",
                "32",
                "--train-limit",
                "8",
                "--step-sizes",
                "1",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    folder = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["model"]
    model = load_pretrained(folder)
    assert model.config.layer_to_block == [0] * 6 and model.config.causal
    rows_file = tmp_path / "ppl.json"
    assert (
        main(
            [
                "steps",
                "eval",
                "--model",
                folder,
                "--steps",
                "6",
                "2",
                "--limit",
                "4",
                "--json",
                str(rows_file),
            ]
        )
        == 0
    )
    rows = json.loads(rows_file.read_text())
    assert all(r["metric"] == "perplexity" and r["score"] > 1 for r in rows)
    plan = step_plan(model.config, 2)
    assert [s.step_size for s in plan.steps] == [3.0, 3.0]


def test_layer_latency_benchmark_times_every_n_against_six(tmp_path, load_benchmark):
    """benchmarks/steps.py latency: the layers' time is the model's minus its time with no
    steps; N = 6 is the reference (ratio exactly 1), and N = 3 over two groups of three layers
    takes the plan inference uses (1.5, 1.5 in the first group, 3 in the second)."""
    steps = load_benchmark("steps")
    out = tmp_path / "steps.json"
    argv = ["latency", "--quick", "--tasks", "rte", "--groups", "2", "--n-steps", "6", "3"]
    assert steps.main(argv + ["--out", str(out), "--runs", str(tmp_path)]) == 0
    rows = {r["setting"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"N=6 euler", "N=3 euler"}
    six, three = rows["N=6 euler"]["extras"], rows["N=3 euler"]["extras"]
    assert six["layer_ratio_b1"] == six["layer_ratio_b32"] == 1.0
    assert three["step_sizes"] == [1.5, 1.5, 3.0]
    assert rows["N=3 euler"]["method"] == "latency-g2-ln"
    for size in (1, 32):
        assert 0 < three[f"embeddings_ms_b{size}"] < three[f"median_ms_b{size}"]
        assert three[f"layer_ratio_b{size}"] > 0


def test_decoder_seed_study_trains_beside_seed_42_untimed(tmp_path, load_benchmark):
    """benchmarks/steps.py decoders --seed 43: the shared models train into their own
    ``-s43`` folders from other weights (another score), record the seed, and are not timed
    (generation speed is the seed-42 model's); --no-unshared leaves the unshared one alone."""
    steps = load_benchmark("steps")
    out = tmp_path / "steps.json"
    argv = ["decoders", "--quick", "--groups", "1", "--modes", "naive", "--n-steps", "6", "3"]
    argv += ["--out", str(out), "--runs", str(tmp_path)]
    assert steps.main(argv) == 0
    assert steps.main(argv + ["--seed", "43", "--no-unshared"]) == 0
    rows = {(r["method"], r["setting"], r["seed"]): r for r in json.loads(out.read_text())["rows"]}
    assert {seed for method, _, seed in rows if method == "decoder-unshared"} == {42}
    first = rows[("decoder-shared-g1-naive", "N=3 euler", 42)]
    again = rows[("decoder-shared-g1-naive", "N=3 euler", 43)]
    assert first["extras"]["tokens_per_second"] > 0
    assert again["extras"]["tokens_per_second"] is None
    assert "seed study (seed 43)" in again["extras"]["timing"]["how"]
    assert "decoder/shared-g1-naive-s43" in again["extras"]["model_dir"]
    assert again["score"] != first["score"]
    assert again["extras"]["teacher_independent"]


def test_task_plot_draws_the_timed_euler_rows_of_the_whole_file(load_benchmark):
    """steps_<task>.png is drawn from every row of the task in the file: a seed study (or a
    run of one variant) redraws the whole seed-42 plot instead of replacing it with its own
    rows; Heun, fidelity, latency and decoder rows and other tasks stay out."""
    steps = load_benchmark("steps")

    def r(method, setting, seed=42, task="sst2"):
        return {"task": task, "method": method, "setting": setting, "seed": seed}

    rows = [
        r("teacher", "unshared, 6 layers", None),
        r("shared-g1-step-aware-ln", "N=3 euler"),
        r("shared-g1-step-aware-ln", "N=3 euler", 43),
        r("shared-g1-step-aware-ln", "N=2 heun"),
        r("fidelity-shared-g1-naive-ln", "N=3"),
        r("latency-g1-ln", "N=3 euler"),
        r("decoder-shared-g1-naive", "N=3 euler", task="sst2"),
        r("shared-g1-naive-ln", "N=3 euler", task="mrpc"),
    ]
    assert steps.plot_rows(rows, "sst2") == rows[:2]
