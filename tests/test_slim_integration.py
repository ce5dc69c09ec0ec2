"""COST-EFF on the real MiniLM-L6 checkpoint and real data, through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from gearshift.cli import main
from gearshift.data import get_task
from gearshift.jobs import TaskData, evaluate
from gearshift.methods.slim import Entropy, load_multi_exit
from gearshift.runtime import load_pretrained, load_tokenizer

pytestmark = pytest.mark.integration


def test_slim_cli_runs_every_stage_and_sweeps(tmp_path, capsys):
    out = tmp_path / "slim"
    sweep_file = tmp_path / "sweep.json"
    args = [
        "slim",
        "--model",
        "minilm-l6",
        "--task",
        "rte",
        "--output",
        str(out),
        "--heads",
        "2",
        "--ffn",
        "128",
        "--word-rank",
        "64",
        "--iterations",
        "2",
        "--ta-steps",
        "2",
        "--steps-per-iteration",
        "1",
        "--recovery-steps",
        "1",
        "--batch-size",
        "4",
        "--train-limit",
        "16",
        "--dev-limit",
        "24",
        "--thresholds",
        "0.1",
        "0.6",
        "--json",
        str(sweep_file),
        "--no-progress",
    ]
    assert main(args) == 0
    result = json.loads(sweep_file.read_text())
    assert [s["name"] for s in result["stages"]] == ["ta", "prune-1", "prune-2", "recover"]
    rows = result["sweep"]
    assert rows[0]["criterion"] == "no early exit" and rows[0]["mean_exit_layer"] == 6
    assert {r["criterion"] for r in rows} >= {"entropy < 0.1", "entropy < 0.6", "patience 1"}
    assert all(r["flops"] <= rows[0]["flops"] + 1e-6 for r in rows)
    final = load_multi_exit(result["stages"][-1]["model"])
    assert [b.num_heads for b in final.config.blocks] == [2] * 6
    assert [b.intermediate_size for b in final.config.blocks] == [128] * 6
    assert final.config.word_rank == 64
    # the generic loader and evaluate() take the folder; early exit runs in batches
    model = load_pretrained(result["stages"][-1]["model"])
    tok = load_tokenizer(result["stages"][-1]["model"])
    dev = TaskData.load(get_task("rte"), tok, "dev", 24)
    full = evaluate(model, dev)["accuracy"]
    with model.criterion(Entropy(0.6)):
        early = evaluate(model, dev)["accuracy"]
    assert 0 <= full <= 100 and 0 <= early <= 100
    assert rows[0]["score"] == pytest.approx(full)
    # running again finds every stage done and does not train
    capsys.readouterr()
    assert main(args) == 0
    again = json.loads(sweep_file.read_text())
    assert again["sweep"] == rows
    with torch.no_grad():
        assert model.exits[0].out.weight.shape == (2, 384)


def test_benchmark_schedule_scale_names_its_models_apart(load_benchmark):
    """benchmarks/slim.py --schedule-scale K multiplies every stage's steps and tags the
    models, so a longer schedule lands beside the default rows, not over them."""
    slim = load_benchmark("slim")
    default = slim.parse_args([])
    assert slim.schedule_tag(default) == ""
    assert slim.schedule(default) == {
        "ta_steps": 300,
        "steps_per_iteration": 150,
        "recovery_steps": 300,
    }
    longer = slim.parse_args(["--schedule-scale", "4"])
    assert slim.schedule_tag(longer) == "-steps4x"
    cfg = slim.slim_config(longer, heads=2, ffn=128, word_rank=64)
    assert (cfg.ta_steps, cfg.steps_per_iteration, cfg.recovery_steps) == (1200, 600, 1200)
    with pytest.raises(SystemExit):
        slim.parse_args(["--schedule-scale", "0"])


def test_benchmark_seed_study_trains_with_its_seed_and_plots_the_first_run(
    load_benchmark, tmp_path, monkeypatch
):
    """benchmarks/slim.py --seed N: every stage trains with seed N (42 by default), and the
    task's plot draws the first runs only: a seed study's rows move each threshold's FLOPs,
    so they are compared seed by seed in the report, not drawn into the curves."""
    slim = load_benchmark("slim")
    assert slim.slim_config(slim.parse_args([]), heads=2, ffn=128).seed == 42
    assert slim.slim_config(slim.parse_args(["--seed", "43"]), heads=2, ffn=128).seed == 43
    drawn = {}
    monkeypatch.setattr(slim, "plot_tradeoff", lambda rows, path, **kw: drawn.update(rows=rows))

    def row(seed, task="sst2"):
        return {"task": task, "method": "cost-eff-C", "setting": "entropy < 0.3", "seed": seed}

    slim.plot_task([row(42), row(None), row(43), row(44), row(42, "mrpc")], "sst2", tmp_path)
    assert [r["seed"] for r in drawn["rows"]] == [42, None]
