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
        "than every single method and within 1 point of the teacher: svd+int8 (-0.50)."
    )
    assert not any("svd+k4" in v for v in verdicts)
