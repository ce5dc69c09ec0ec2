"""The compose benchmark's verdict: which stacks dominate every single method at their budget."""


def row(method, setting, score, flops, b1=None):
    return {
        "task": "mrpc",
        "method": method,
        "setting": setting,
        "score": score,
        "flops_dynamic": flops,
        "latency_ratio_b1": b1,
        "extras": {"size_on_disk": flops * 10},
    }


def test_dominance_compares_each_stack_with_the_best_affordable_single(load_benchmark):
    bench = load_benchmark("compose")
    rows = [
        row("teacher", "full", 90.0, 100, 1.0),
        row("int8", "int8", 89.0, 100, 0.4),
        row("factorize", "svd", 86.0, 60, 0.6),
        row("plugins", "k4", 85.0, 55, 0.9),
        row("stack", "svd+k4", 84.0, 35, 0.5),  # nothing single costs <= 35 FLOPs
        row("stack", "svd+int8", 86.5, 60, 0.3),  # beats svd (86.0) at 60 FLOPs
        row("stack", "int8+k4", 84.5, 55, 0.35),  # loses to k4 (85.0) at 55 FLOPs
    ]
    got = {d["setting"]: d for d in bench.dominance(rows, "flops_dynamic")}
    assert got["svd+k4"]["verdict"] == "alone" and got["svd+k4"]["best_single"] is None
    assert got["svd+int8"]["verdict"] == "dominates"
    assert got["svd+int8"]["best_single"] == ("svd", 86.0)
    assert abs(got["svd+int8"]["margin"] - 0.5) < 1e-9
    assert got["int8+k4"]["verdict"] == "no" and got["int8+k4"]["best_single"] == ("k4", 85.0)
    # on latency the picture changes: int8 (0.4) is affordable for svd+k4 (0.5) and wins
    lat = {d["setting"]: d for d in bench.dominance(rows, "latency_ratio_b1")}
    assert lat["svd+k4"]["verdict"] == "no" and lat["svd+k4"]["best_single"] == ("int8", 89.0)
    assert lat["svd+int8"]["verdict"] == "alone"
    # rows without the cost are left out, never counted as free
    rows.append(row("stack", "untimed", 99.0, 10, None))
    assert "untimed" not in {d["setting"] for d in bench.dominance(rows, "latency_ratio_b1")}


def test_report_renders_the_compose_section_with_floors(load_benchmark):
    """BENCHMARKS.md's compose section: per-task table, "no signal" rows kept out of the
    verdict (a stack at the constant prediction never "dominates")."""
    report = load_benchmark("report")
    rows = [
        row("teacher", "full", 90.0, 100, 1.0),
        row("int8", "int8", 89.0, 100, 0.4),
        row("stack", "svd+int8", 89.5, 50, 0.3),
        row("stack", "svd+k4", 60.0, 30, 0.2),  # below the floor: no signal
    ]
    for r in rows:
        r.update(metric="f1", reference_score=90.0, command="c", date="d", machine="m")
        r["extras"]["flops_ratio"] = r["flops_dynamic"] / 100
    floors = {"mrpc": report.Floor("mrpc", "f1", 81.22, 1.6, 408)}
    report.constant_floors = lambda tasks: floors  # no dev data needed
    text = report.render_section("compose", rows, floors, "compose.json")
    assert "### Targets" in text and "### mrpc" in text
    assert "| stack | svd+k4 | 60.00 (no signal) |" in text
    verdicts = [line for line in text.splitlines() if line.startswith("- ") and ":" in line]
    flops = next(v for v in verdicts if v.startswith("- FLOPs per example"))
    assert flops == (
        "- FLOPs per example: no stack beats the best single method it can afford. Cheaper "
        "than every single method and within 1 point of the teacher: svd+int8 (-0.50, 1 seed)."
    )
    assert not any("svd+k4" in v for v in verdicts)


def test_shared_steps_and_exits_points_run_and_count_fewer_flops(load_benchmark, tmp_path):
    """The compose benchmark's shared-model part on a tiny shared encoder with the real
    tokenizer and SST-2 sentences: exit heads train on the frozen shared model, both stack
    folders save and reload, every point scores, and fewer steps (and exits) cost fewer
    FLOPs while exits leave after a step the plan runs."""
    import torch

    from gearshift.compose import load_stack
    from gearshift.data import get_task
    from gearshift.data.taskdata import TaskData
    from gearshift.runtime import ModelConfig, Transformer, load_tokenizer, save_model

    bench = load_benchmark("compose")
    task, tok = get_task("sst2"), load_tokenizer("minilm-l6")
    torch.manual_seed(0)
    cfg = ModelConfig.uniform(
        family="bert",
        vocab_size=len(tok),
        num_layers=6,
        num_heads=2,
        intermediate_size=32,
        hidden_size=16,
        shared_groups=2,
        type_vocab_size=2,
        layer_norms=True,
        max_positions=130,
        head={"kind": "classification", "num_labels": 2},
    )
    save_model(Transformer(cfg).eval(), tmp_path / "shared", tokenizer=tok)
    stacks = bench.shared_stacks(tmp_path / "shared", tmp_path / "runs", task, tok, 4, True)
    points = bench.shared_points(task, stacks, "tiny shared")
    assert [p.run for p in points[:3]] == [{"steps": n} for n in ("6", "3", "2")]
    assert sum(p.method == "stack" for p in points) == 2 * len(bench.criteria_for(task))
    dev = TaskData.load(task, tok, "dev", limit=24)
    flops = {}
    for p in points:
        metrics, f = bench.score_point(load_stack(p.stack_dir), p.run, dev)
        assert 0 <= metrics[task.main_metric] <= 100
        flops[p.setting] = f
    assert flops["tiny shared, N=2"] < flops["tiny shared, N=3"] < flops["tiny shared, N=6"]
    eager = [p for p in points if p.run.get("exits") == "entropy:0.4" and p.run["steps"] == "3"][0]
    # a loose threshold exits early: never dearer than running all three steps
    assert flops[eager.setting] <= flops["tiny shared, N=3"] * 1.001
    stack = load_stack(eager.stack_dir)
    batch = {k: v for k, v in next(iter(dev.loader(8))).items() if k != "labels"}
    out = stack(**batch, setting=eager.run)
    assert out.exit_step is not None and int(out.exit_step.max()) <= 3


def test_seed_studies_average_and_say_how_many_seeds(load_benchmark):
    """Rows of a seed study (untimed, seeds 43 and 44) join seed 42's timed row: the table
    shows mean ± std over seeds with seed 42's latency, and a verdict says whether its
    margin clears the seeds' spread."""
    bench = load_benchmark("compose")

    def r(method, setting, score, flops, seed=None, b1=None):
        out = row(method, setting, score, flops, b1)
        out.update(latency_ratio_b32=b1, reference_score=90.0, seed=seed)
        out["extras"].update(size_on_disk=10, flops_ratio=flops / 100)
        return out

    rows = [
        r("teacher", "full", 90.0, 100, b1=1.0),
        r("factorize", "svd", 86.0, 60, b1=0.6),
        r("stack", "svd+exits", 87.0, 50, seed=42, b1=0.4),
        r("stack", "svd+exits", 86.5, 50, seed=43),
        r("stack", "svd+exits", 85.9, 50, seed=44),
        r("stack", "svd+int8+exits", 89.0, 55, seed=42, b1=0.3),
    ]
    agg = {x["setting"]: x for x in bench.over_seeds(rows)}
    assert len(agg) == 4
    se = agg["svd+exits"]
    assert abs(se["score"] - (87.0 + 86.5 + 85.9) / 3) < 1e-9
    assert se["latency_ratio_b1"] == 0.4 and sorted(se["extras"]["seed_scores"]) == [42, 43, 44]
    assert (
        agg["svd+int8+exits"]["score"] == 89.0
        and "seed_scores" not in agg["svd+int8+exits"]["extras"]
    )
    text = bench.markdown(rows, signal=lambda row: True)
    assert "86.47 ± 0.55 (3 seeds)" in text
    # svd+exits beats svd by 0.47 on average, inside its own seeds' std of 0.55
    assert "svd+exits (+0.47 over svd; 3 seeds, within the seed spread (std 0.55))" in text
    assert "svd+int8+exits (+3.00 over svd; 1 seed)" in text


def test_a_seed_study_run_draws_no_plot_and_does_not_fail(load_benchmark, tmp_path, monkeypatch):
    """A seed study's rows (seed 44, untimed) leave no timed row to plot: ``plot`` returns
    quietly (it raised "no row has both latency and score" after the rows were written)."""
    import argparse
    import types

    compose = load_benchmark("compose")
    monkeypatch.setattr(compose, "RESULTS", tmp_path / "compose.json")
    task = types.SimpleNamespace(name="mrpc")
    rows = [{"task": "mrpc", "method": "stack", "setting": "s", "score": 80.0, "seed": 44}]
    compose.plot(task, rows, tmp_path, argparse.Namespace(quick=False))
    assert not list(tmp_path.glob("*.png"))
