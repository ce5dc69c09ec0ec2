"""benchmarks/report.py: the target verdicts are computed from the rows, and can fail."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from gearshift.measure import OperatingPoint

REPORT = Path(__file__).resolve().parents[1] / "benchmarks" / "report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("gearshift_bench_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(task, method, setting, score, **extras) -> dict:
    return OperatingPoint(
        task=task,
        model="m",
        method=method,
        setting=setting,
        metric="accuracy",
        score=score,
        extras=extras,
    ).to_dict()


def _steps_rows(aware_a2: float, naive_a2: float, ratio_b32: float) -> list[dict]:
    lat = {"latency_ratio_b1_vs_n6": 0.5, "latency_ratio_b32_vs_n6": ratio_b32}
    return [
        _row("sst2", "teacher", "unshared, 6 layers", 88.0),
        _row("sst2", "teacher-drop-first", "N=3: first 3 layers, no re-training", 80.0),
        _row("sst2", "teacher-drop-euler", "N=3: Euler a=2 through every 2-th layer", 70.0),
        _row("sst2", "shared-g1-step-aware", "N=6 euler", 85.0, groups=1, distil_steps=600),
        _row("sst2", "shared-g1-step-aware", "N=3 euler", aware_a2, groups=1, **lat),
        _row("sst2", "shared-g1-naive", "N=6 euler", 86.0, groups=1),
        _row("sst2", "shared-g1-naive", "N=3 euler", naive_a2, groups=1, **lat),
    ]


def test_steps_targets_met_and_missed(report):
    met = report.steps_targets(_steps_rows(aware_a2=84.0, naive_a2=60.0, ratio_b32=0.52))
    assert "| within 1.5 points of itself at a = 1 | drop 1.00 | met (1 seed) |" in met
    untested = "(1 seed; significance not tested: no predictions stored)"
    assert f"naive model at a = 2 (60.00) | +24.00 | met {untested} |" in met
    assert f"(best: teacher-drop-first, 80.00) | +4.00 | met {untested} |" in met
    assert (
        "batch-32 latency at a = 2 <= 0.55x of a = 1 (whole model; the target as first "
        "written) | 0.520 (loaded) | met |"
    ) in met
    assert "sits 3.00 (naive: 2.00) points below it after 600" in met
    assert "fair reference" not in met

    fair = _row("sst2", "unshared-finetuned", "unshared, fine-tuned on 100", 86.5, train_limit=100)
    with_fair = report.steps_targets([*_steps_rows(84.0, 60.0, 0.52), fair])
    assert (
        "(on 100 examples), scores 86.50: the shared model at a = 1 sits 1.50 points" in with_fair
    )
    assert "What more distillation buys" not in with_fair
    assert "not a target" not in with_fair
    assert "random weights" not in with_fair
    scratch = _row("sst2", "scratch-finetuned", "random init, 6 layers, fine-tuned", 78.0)
    with_scratch = report.steps_targets([*_steps_rows(84.0, 60.0, 0.52), scratch])
    assert (
        "fine-tuned like them, scores 78.00: the shared model at a = 1 is +7.00 points"
        in with_scratch
    )

    cut = _row("sst2", "unshared-cut-finetuned", "N=3: first 3 layers of the pre-trained", 85.5)
    with_cut = report.steps_targets([*_steps_rows(84.0, 60.0, 0.52), cut])
    assert (
        "| (not a target) better than the pre-trained model's first 3 layers fine-tuned the "
        f"same way (85.50) | -1.50 | missed: 1.50 points worse {untested} |" in with_cut
    )

    longer = [
        _row("sst2", "shared-g1-step-aware-d1800", "N=6 euler", 86.5, groups=1),
        _row("sst2", "shared-g1-step-aware-d1800", "N=3 euler", 85.0, groups=1),
    ]
    more = report.steps_targets([*_steps_rows(84.0, 60.0, 0.52), *longer])
    assert (
        "What more distillation buys (step-aware): 1800 steps instead of 600 give 86.50 at "
        "a = 1 (+1.50) and 85.00 at a = 2 (+1.00)." in more
    )

    per_group = [
        _row("sst2", "shared-g1-step-aware-pg", "N=6 euler", 85.5, groups=1, distil_steps=600),
        _row("sst2", "shared-g1-step-aware-pg", "N=3 euler", 85.0, groups=1),
    ]
    with_pg = report.steps_targets([*_steps_rows(84.0, 60.0, 0.52), *per_group])
    assert (
        "fully shared, a step size drawn per group, step-aware, at a = 2 (N = 3 Euler steps): 85.00"
        in (with_pg)
    )
    assert "| within 1.5 points of itself at a = 1 | drop 0.50 | met (1 seed) |" in with_pg
    assert f"naive model at a = 2 (60.00) | +25.00 | met {untested} |" in with_pg

    missed = report.steps_targets(_steps_rows(aware_a2=79.0, naive_a2=79.0, ratio_b32=0.6))
    assert "drop 6.00 | missed by 4.50 points (1 seed) |" in missed
    assert f"(79.00) | +0.00 | missed: a tie {untested} |" in missed  # a tie: not better
    assert f"| -1.00 | missed: 1.00 points worse {untested} |" in missed
    assert "| 0.600 (loaded) | missed by 0.050 |" in missed


def test_factorize_targets_average_only_complete_rows(report):
    def rows(task, teacher, scores):
        out = [_row(task, "teacher", "full", teacher)]
        for (method, ratio), score in scores.items():
            mode = "grouped" if "grouped" in method else "per-layer"
            out.append(_row(task, method, f"ratio {ratio}, {mode}, no fine-tuning", score))
        return out

    scores = {
        ("svd", 4): 70.0,
        ("fwsvd", 4): 72.0,
        ("svdllm", 4): 78.0,
        ("ae-grouped", 4): 74.0,
        ("ae-act", 4): 79.0,
    }
    data = rows("sst2", 80.0, scores) + rows("rte", 60.0, {k: v - 20 for k, v in scores.items()})
    data += rows("sst2", 80.0, {("svd", 2): 79.0})  # no rte row at ratio 2: not averaged
    text = report.factorize_targets(data, floors={})
    assert "| svd | - | 10.00 |" in text
    over = "over rte, sst2"
    seeds = "ae-grouped 1 seed, svd no draw, fwsvd 1 seed"  # plain svd draws nothing
    assert (
        f"| grouped autoencoder above truncated SVD and FWSVD | 4 | holds ({over}; {seeds}) |"
        in text
    )
    assert (
        "(ae-act) above every baseline, by drop, each over the tasks both have a signal on "
        f"(strongest rival: svdllm, 1.00 against 2.00 {over}; ae-act 1 seed, svdllm 1 seed) "
        "| 4 | met |"
    ) in text

    # the share of the teacher's margin over a constant prediction: sst2 floor 50 (margin
    # 30); rte floor 58.5 with no noise (teacher 60): svdllm's 58 has no signal there, and
    # the mean leaves rte out of its row and of the comparison
    text = report.factorize_targets(data, floors={"sst2": 50.0, "rte": 58.5})
    assert "| svdllm | - | 93.3% (w/o rte) |" in text  # 28/30
    assert "| ae-act | - | 65.0% |" in text  # (29/30 + 0.5/1.5) / 2
    assert "| svdllm | - | 2.00 (w/o rte) |" in text  # the drop leaves rte out too
    assert (
        "(strongest rival: svdllm, 96.7% against 93.3% over sst2; ae-act 1 seed, svdllm 1 seed) "
        "| 4 | met |"
    ) in text

    # a seed study of ae-grouped and fwsvd (factorize.py --seed): the claim's means rest on
    # the fewest seeds any task's row has, and plain svd, which draws nothing, says so
    def again(task, method, score, seed):
        mode = "grouped" if "grouped" in method else "per-layer"
        return {**_row(task, method, f"ratio 4, {mode}, no fine-tuning", score), "seed": seed}

    for r in data:
        r.setdefault("seed", 42)
    studied = data + [
        again(t, m, base - 20 * (t == "rte") + d, seed)
        for t in ("sst2", "rte")
        for m, base in (("ae-grouped", 74.0), ("fwsvd", 72.0))
        for seed, d in ((43, 1.0), (44, -1.0))
    ]
    studied = [
        r
        for r in studied
        if not (r["task"] == "rte" and r.get("seed") == 44) or r["method"] != "fwsvd"
    ]  # fwsvd has 2 seeds on rte: the claim rests on 2
    text = report.factorize_targets(studied, floors={})
    assert "holds (over rte, sst2; ae-grouped 3 seeds, svd no draw, fwsvd 2 seeds) |" in text
    assert "constant" not in report.factorize_targets(data, floors={})  # no data: no table

    data = [r for r in data if r["method"] != "ae-act"]
    data += rows("sst2", 80.0, {("ae-act", 4): 70.0}) + rows("rte", 60.0, {("ae-act", 4): 50.0})
    missed = "over rte, sst2; ae-act 1 seed, svdllm 1 seed) | 4 | missed |"
    assert missed in report.factorize_targets(data, floors={})


def test_factorize_finetune_protocol_drops_from_its_own_reference(report):
    protocol = "fine-tune (2000 examples, 1 epoch)"

    def tuned(task, method, ratio, score):
        mode = "grouped" if "grouped" in method else "per-layer"
        setting = f"ratio {ratio}, {mode}, compress pre-trained then {protocol}"
        return _row(task, f"{method}+finetune", setting, score)

    data = [_row(t, "teacher", "full", 90.0) for t in ("sst2", "rte")]
    data += [
        _row("sst2", "uncompressed+finetune", f"uncompressed pre-trained then {protocol}", 80.0),
        _row("rte", "uncompressed+finetune", f"uncompressed pre-trained then {protocol}", 60.0),
    ]
    for task, ref in (("sst2", 80.0), ("rte", 60.0)):
        data += [
            tuned(task, "svd", 4, ref - 6),
            tuned(task, "fwsvd", 4, ref - 4),
            tuned(task, "ae-grouped", 4, ref - 2),
        ]
    data.append(tuned("sst2", "svd", 10, 50.0))  # no rte row at ratio 10: not averaged
    text = report.factorize_targets(data, floors={})
    assert "drop from the uncompressed pre-trained model fine-tuned the same way" in text
    assert "(reference: rte 60.00, sst2 80.00)" in text
    assert "| svd | 6.00 | - |" in text and "| ae-grouped | 2.00 | - |" in text
    assert "| sst2 | svd | 10 | 50.00 | 30.00 |" in text  # each row, even unaveraged ones
    assert (
        "| grouped autoencoder above truncated SVD and FWSVD, fine-tuned | 4 | holds (over rte, "
        "sst2; ae-grouped 1 seed, svd 1 seed, fwsvd 1 seed) |" in text  # fine-tuning draws
    )
    # the claim cell by cell, where the three rows exist (sst2 at ratio 10 has svd alone)
    assert "| rte | 4 | 58.00 | 54.00 | 56.00 | holds |" in text
    assert "| sst2 | 4 | 78.00 | 74.00 | 76.00 | holds |" in text
    assert "| sst2 | 10 |" not in text.split("task by task")[1]
    # the scores pivoted: a row per method (families in order), a cell per task
    by_cell = text.split("Score by task")[1]
    assert "| fine-tuned score, ratio 4 / 10 | rte | sst2 |" in by_cell
    lines = [
        "| svd | 54.00 / - | 74.00 / 50.00 |",  # sst2 ratio 10 has one row: nothing in bold
        "| fwsvd | 56.00 / - | 76.00 / - |",
        "| ae-grouped | **58.00** / - | **78.00** / - |",
    ]
    assert all(line in by_cell for line in lines)
    assert by_cell.index(lines[0]) < by_cell.index(lines[1]) < by_cell.index(lines[2])
    assert "| sst2 | svd | 10 | 50.00 | 30.00 | - | - | - |" in text  # no diagnosis recorded
    assert "Diagnosis" not in text
    # the diagnosis: where each run started, whether its loss moved, and the dense rebuild
    diag = {
        "start_fidelity": 0.05,
        "train_loss_first": 0.693,
        "train_loss_last": 0.69,
        "weight_change": 0.5,
    }
    ae = next(r for r in data if r["task"] == "rte" and r["method"] == "ae-grouped+finetune")
    ae["extras"].update(diag)
    setting = f"ratio 4, grouped, compress pre-trained, rebuild dense, then {protocol}"
    dense = _row("rte", "ae-grouped+finetune-dense", setting, 59.0, **diag)
    dense["extras"].update(train_loss_last=0.4, weight_change=0.01)
    diagnosed = report.factorize_targets(data + [dense], floors={})
    assert "| rte | ae-grouped | 4 | 58.00 | 2.00 | 0.050 | 0.693 -> 0.690 | 0.500 |" in diagnosed
    diagnosis = diagnosed.split("Diagnosis")[1]
    assert (
        "| rte | ae-grouped | 4 | 0.050 | 58.00 | 0.693 -> 0.690 | 0.500 | dense | 59.00 "
        "| 0.693 -> 0.400 | 0.010 |" in diagnosis
    )
    assert "| ae-grouped | 2.00 | - |" in diagnosed  # the dense row is not the protocol's
    assert "another learning rate" not in diagnosed  # no learning-rate variant yet
    # the claim again with the autoencoder's compressed form at another learning rate
    for lr, score in (("1e-05", 57.0), ("1e-06", 55.0)):
        setting = f"ratio 4, grouped, compress pre-trained, compressed parameters at lr {lr}, "
        data.append(_row("rte", f"ae-grouped+finetune-lr{lr}", setting + f"then {protocol}", score))
    again = report.factorize_targets(data, floors={})
    assert "| rte | 4 | 58.00 | 54.00 | 56.00 | holds | 57.00 (lr 1e-05) | holds |" in again
    data[-2]["score"] = 59.5  # lr 1e-05 now above the protocol's 58
    again = report.factorize_targets(data, floors={})
    assert "| rte | 4 | 58.00 | 54.00 | 56.00 | holds | 59.50 (lr 1e-05) | holds |" in again
    assert "| sst2 | 4 | 78.00 | 74.00 | 76.00 | holds | not measured | - |" in again
    del data[-2:]
    for key in diag:
        del ae["extras"][key]
    # another fine-tuning schedule gets its own table, against its own references
    longer = "fine-tune (2000 examples, 3 epochs)"
    other = [
        _row("sst2", "uncompressed+finetune", f"uncompressed pre-trained then {longer}", 88.0),
        _row(
            "sst2", "svd+finetune", f"ratio 4, per-layer, compress pre-trained then {longer}", 85.0
        ),
    ]
    both = report.factorize_targets(data + other, floors={})
    assert text.rstrip("\n") in both  # the first schedule's table is unchanged
    assert f"then {longer}): mean score drop" in both and "(reference: sst2 88.00)" in both
    assert "| svd | 3.00 |" in both
    data = [r for r in data if not (r["method"] == "ae-grouped+finetune" and r["task"] == "rte")]
    data.append(tuned("rte", "ae-grouped", 4, 50.0))
    text = report.factorize_targets(data, floors={})
    assert (
        "fine-tuned | 4 | does not hold (ae-grouped drop 6.00; svd 6.00, fwsvd 4.00; over rte, "
        "sst2; ae-grouped 1 seed, svd 1 seed, fwsvd 1 seed) |" in text
    )
    assert "| rte | 4 | 50.00 | 54.00 | 56.00 | does not hold |" in text
    assert "| sst2 | 4 | 78.00 | 74.00 | 76.00 | holds |" in text
    data[-1]["score"] = 56.0  # level with fwsvd: named as a tie, still not above
    text = report.factorize_targets(data, floors={})
    assert "| rte | 4 | 56.00 | 54.00 | 56.00 | does not hold (tie) |" in text
    assert "| fwsvd | **56.00** / - |" in text and "| ae-grouped | **56.00** / - |" in text
    for r in data:
        if r["task"] == "rte" and r["method"].endswith("+finetune"):
            r["score"] = 52.71  # every row the same constant answer: nothing in bold
    text = report.factorize_targets(data, floors={})
    assert "| svd | 52.71 / - |" in text and "| ae-grouped | 52.71 / - |" in text
    # with rte's floor at 52.71 +- 1.5 those rows, and the cell's claim, have no signal
    floor = report.Floor("rte", "accuracy", 52.71, 1.5, 277)
    text = report.factorize_targets(data, floors={"rte": floor})
    assert "| svd | no signal / - |" in text and "| ae-grouped | no signal / - |" in text
    assert "| rte | 4 | 52.71 | 52.71 | 52.71 | no signal (ae-grouped, svd, fwsvd) |" in text
    assert "| svd | 6.00 (w/o rte) | - |" in text
    assert "| rte | svd | 4 | 52.71 (no signal) |" in text
    assert "holds (over sst2; ae-grouped 1 seed, svd 1 seed, fwsvd 1 seed) |" in text


def test_command_line_quotes_arguments(report):
    line = report.command_line("/x/benchmarks/steps.py", ["encoders", "--tasks", "sst2", "a b"])
    assert line == "python benchmarks/steps.py encoders --tasks sst2 'a b'"
    assert report.command_line("slim.py", []) == "python benchmarks/slim.py"


def test_steps_better_than_naive_needs_a_significant_difference(report):
    """With stored dev predictions, "better" means McNemar p < 0.05, not any positive gap."""
    labels = "1" * 100

    def rows(aware_right: int, naive_right: int) -> list[dict]:
        out = _steps_rows(aware_a2=aware_right, naive_a2=naive_right, ratio_b32=0.5)
        for r in out:
            if r["setting"] == "N=3 euler":
                right = aware_right if "step-aware" in r["method"] else naive_right
                preds = "1" * right + "0" * (100 - right)
                r["extras"] |= {"dev_predictions": preds, "dev_labels": labels}
        return out

    clear = report.steps_targets(rows(aware_right=80, naive_right=60))
    assert "| +20.00 | met (1 seed; 20 vs 0 examples right by one only, p = 1.91e-06) |" in clear
    close = report.steps_targets(rows(aware_right=80, naive_right=77))
    assert (
        "| +3.00 | not significant (1 seed; 3 vs 0 examples right by one only, p = 0.25) |" in close
    )
    worse = report.steps_targets(rows(aware_right=70, naive_right=77))
    assert "| -7.00 | missed (1 seed; 0 vs 7 examples right by one only" in worse


def test_slim_curves_compare_best_scores_over_shared_budgets(report):
    def pt(method, setting, score, mflops, **kw):
        r = _row("rte", method, setting, score)
        r["flops_dynamic"] = mflops * 1e6
        r.update(kw)
        return r

    rows = [
        pt("teacher", "full", 70.0, 500),
        pt("cost-eff-A", "entropy < 0.1", 66.0, 40, latency_ratio_b32=0.16),
        pt("cost-eff-A", "entropy < 0.5", 64.0, 20),
        pt("cost-eff-B", "entropy < 0.1", 68.0, 150),
        pt("cost-eff-A-cls", "entropy < 0.1", 10.0, 30),  # old exit pooling: ignored
        pt("static-A", "no exits", 65.0, 40),
        pt("truncated-1", "first 1 layers, fine-tuned", 60.0, 90),
        pt("truncated-2", "first 2 layers, fine-tuned", 69.0, 180),
        pt("multi-exit", "entropy < 0.5", 69.0, 600),
    ]
    text = report.slim_curves(rows)
    assert "| rte | default | static pruning | 40-40 | +1.00 | +1.00 | met (1 seed) |" in text
    # at 90 MFLOPs COST-EFF's best is 66 (A at 40) against 60; at 150: 68 against 60
    assert (
        "| rte | default | truncated + fine-tuned | 90-150 | +6.00 | +7.00 | met (1 seed) |" in text
    )
    assert "| rte | default | multi-exit (no pruning) | no shared budget | - | - | - |" in text
    assert "| rte | default | deebert (frozen backbone) | - | - | - | not measured |" in text
    rows.append(pt("deebert", "entropy < 0.2", 67.0, 30))
    assert (
        "| rte | default | deebert (frozen backbone) | 30-30 | -3.00 | -3.00 | below by 3.00 at 30 MFLOPs (1 seed) |"
        in (report.slim_curves(rows))
    )
    latency = report.slim_latency(rows)
    assert "| rte | cost-eff-A | entropy < 0.1 | 0.080 | 0.160 | 2.00 |" in latency
    # a longer schedule is compared apart: it joins neither the default COST-EFF curve nor
    # a default baseline, and meets the baselines of its own schedule (and the cut teacher,
    # whose recipe is the teacher's under any schedule)
    longer = [
        pt("cost-eff-A-steps4x", "entropy < 0.1", 99.0, 40),
        pt("cost-eff-C-steps4x", "entropy < 0.1", 97.0, 95),
        pt("static-A-steps4x", "no exits", 98.0, 40),
    ]
    both = report.slim_curves(rows + longer)
    for line in report.slim_curves(rows).splitlines():
        if line.startswith("| rte |"):
            assert line in both
    assert "| rte | 4x | static pruning | 40-40 | +1.00 | +1.00 | met (1 seed) |" in both
    assert "| rte | 4x | truncated + fine-tuned | 90-95 | +39.00 | +39.00 | met (1 seed) |" in both
    assert "| rte | 4x | multi-exit" not in both  # not run on that schedule: no line
    assert "| rte | default | static pruning | 40-40 | +1.00 | +1.00 | met (1 seed) |" in both
    # with a floor (50, SE 2: line 54) a margin under 2 SE is noise and the cut teacher's
    # one-layer point (60) still counts, while a baseline all at the floor has no signal
    floor = {"rte": report.Floor("rte", "accuracy", 50.0, 2.0, 277)}
    noisy = report.slim_curves(rows, floor)
    assert "| 40-40 | +1.00 | +1.00 | met, within noise (under 2 SE, 2.00; 1 seed) |" in noisy
    low = [r for r in rows if not r["method"].startswith("truncated")]
    low.append(pt("truncated-1", "first 1 layers, fine-tuned", 51.0, 90))
    assert "| truncated + fine-tuned | - | - | - | no signal (every baseline point" in (
        report.slim_curves(low, floor)
    )


def test_steps_summary_lists_every_variant_with_its_references(report):
    rows = [
        *_steps_rows(aware_a2=84.0, naive_a2=60.0, ratio_b32=0.5),
        _row("mrpc", "teacher", "unshared, 6 layers", 86.0),
        _row("mrpc", "shared-g1-step-aware", "N=3 euler", 79.5),
    ]
    text = report.steps_summary(rows)
    assert (
        "| sst2 | shared-g1-step-aware | 85.00 | - | 84.00 | - | - | - | 88.00 / - / - / 80.00 |"
        in text
    )
    assert "| sst2 | shared-g1-naive | 86.00 | - | 60.00 |" in text
    assert "| mrpc | shared-g1-step-aware | - | - | 79.50 | - | - | - | 86.00 / - / - / - |" in text
    cut = _row("mrpc", "unshared-cut-finetuned", "N=3: first 3 layers of the pre-trained", 82.0)
    text = report.steps_summary([*rows, cut])
    assert (
        "| mrpc | shared-g1-step-aware | - | - | 79.50 | - | - | - | 86.00 / - / 82.00 / - |"
        in (text)
    )
    assert report.steps_summary([_row("rte", "teacher", "unshared, 6 layers", 60.0)]) == ""
    # a seed study of the references (--study-references) merges with the seed-42 row, even
    # where that row predates the teacher_independent mark and was scored beside another teacher
    setting = "N=3: first 3 layers of the pre-trained model, fine-tuned on 16000 examples"
    cuts = [
        {**_row("sst2", "unshared-cut-finetuned", setting, 82.0), "seed": 42},
        {
            **_row("sst2", "unshared-cut-finetuned", setting, 81.0, teacher_independent=True),
            "seed": 43,
            "reference_score": 88.3,
        },
        {
            **_row("sst2", "unshared-cut-finetuned", setting, 80.0, teacher_independent=True),
            "seed": 44,
            "reference_score": 88.3,
        },
    ]
    merged = report._cut_reference(cuts, "sst2")
    assert merged["score"] == 81.0 and merged["extras"]["seeds"] == [42, 43, 44]
    text = report.steps_summary([*_steps_rows(84.0, 60.0, 0.5), *cuts])
    assert "88.00 / - / 81.00 ± 1.00 / 80.00 |" in text
    assert report._cut_reference(cuts[:1], "sst2")["score"] == 82.0


def test_steps_fidelity_averages_the_task_texts(report):
    rows = [
        _row("wikitext2", "fidelity-teacher-mean-state", "N=6", 30.0, explained_variance=0.0),
        _row("wikitext2", "fidelity-shared-g1-naive-ln", "N=6", 55.0, explained_variance=0.32),
        _row("wikitext2", "fidelity-shared-g1-naive-ln", "N=3", 38.0),
        _row("sst2", "fidelity-shared-g1-naive-ln", "N=6", 50.0),
        _row("mrpc", "fidelity-shared-g1-naive-ln", "N=6", 40.0),
        _row("sst2", "fidelity-shared-g1-naive-ln", "N=3", 36.0),
        _row("sst2", "shared-g1-naive-ln", "N=6 euler", 80.0),  # a score row: not fidelity
    ]
    text = report.steps_fidelity(rows)
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[1] == "| teacher-mean-state | 30.0 / - | - / - | 0% |"  # the floor first
    # mrpc has no N=3 row: the N=3 mean is over the tasks that have one
    assert lines[2] == "| shared-g1-naive-ln | 55.0 / 38.0 | 45.0 / 36.0 | 32% |"
    assert report.steps_fidelity(rows[-1:]) == ""


def test_steps_init_compares_each_start_before_and_after_distillation(report):
    def init(method, n, after, before):
        return _row("wikitext2", method, f"N={n}", after, cosine_at_init=before, distil_steps=150)

    rows = [
        init("shared-g1-init-mean-ln", 6, 52.0, 0.32),
        init("shared-g1-init-mean-ln", 3, 40.0, 0.30),
        init("shared-g1-init-last-ln", 6, 45.0, 0.01),
        init("shared-g1-init-last-ln", 3, 33.5, 0.02),
        init("shared-g1-init-first-ln", 6, 44.0, 0.17),  # no N=3 row: left out
        _row("wikitext2", "fidelity-shared-g1-naive-ln", "N=6", 55.0),
        _row("wikitext2", "fidelity-shared-g1-init-mean-ln", "N=6", 33.0),  # the fidelity floor
        _row("wikitext2", "fidelity-shared-g1-init-mean-ln", "N=3", 30.0),
    ]
    lines = [line for line in report.steps_init(rows).splitlines() if line.startswith("| ")]
    assert lines[1:] == [
        "| shared-g1-init-last-ln | 1.0 / 2.0 | 45.0 / 33.5 | 150 |",
        "| shared-g1-init-mean-ln | 32.0 / 30.0 | 52.0 / 40.0 | 150 |",
    ]
    assert report.steps_init(rows[-3:]) == ""


def test_decoder_summary_rows_per_model_and_cut(report):
    def dec(method, setting, ppl, tps=None):
        return _row("wikitext2", method, setting, ppl, tokens_per_second=tps)

    rows = [
        dec("decoder-unshared", "N=6 euler", 170.0, 400.0),
        dec("decoder-unshared", "N=3 first", 200.0, 600.0),
        dec("decoder-unshared", "N=3 drop-euler", 190.0, 590.0),
        dec("decoder-shared-g1-step-aware", "N=6 euler", 180.0, 410.0),
        dec("decoder-shared-g1-step-aware", "N=3 euler", 185.0, 700.0),
        dec("decoder-shared-g1-step-aware", "N=3 heun", 181.0),
    ]
    text = report.decoder_summary(rows)
    assert "| unshared (first) | 170.0 | - | 200.0 | - | - | - | 400 / 600 |" in text
    assert "| unshared (drop-euler) | 170.0 | - | 190.0 | - | - | - | 400 / 590 |" in text
    assert "| shared-g1-step-aware | 180.0 | - | 185.0 | - | 181.0 | - | 410 / 700 |" in text
    assert text.index("unshared (first)") < text.index("shared-g1-step-aware")
    assert report.decoder_summary([]) == ""


def test_a_near_miss_is_not_printed_as_missed_by_zero(report):
    assert report._verdict(0.5552, 0.55, False) == "missed by 0.005"
    assert report._verdict(5.3, 0.0, True) == "met"
    assert report._verdict(91.2, 96.5, True, " pp") == "missed by 5.30 pp"


def test_rows_of_a_rebuilt_teacher_are_named_and_measured_against_their_own(report):
    def row(task, method, setting, score, ref, date):
        r = _row(task, method, setting, score)
        r["reference_score"], r["date"] = ref, date
        return r

    old, new = "2026-11-22T10:00:00+00:00", "2026-11-23T05:00:00+00:00"
    data = [
        row("sst2", "teacher", "full", 88.0, 88.0, new),  # the rebuilt teacher
        row("sst2", "svd", "ratio 4, per-layer, no fine-tuning", 80.0, 90.0, old),
        row("sst2", "fwsvd", "ratio 4, per-layer, no fine-tuning", 80.0, 88.0, new),
        row("sst2", "fidelity-x", "N=6", 50.0, 100.0, new),  # another metric: not counted
    ]
    data[-1]["metric"] = "cosine"
    text = report.teacher_generations(data)
    assert "- sst2: rows by the teacher score they were measured against: 90.00 (1 row, " in text
    assert "2026-11-22), 88.00 (1 row, 2026-11-23); the teacher row shows 88.00." in text
    assert "100.00" not in text
    assert report.teacher_generations(data[:1] + data[2:]) == ""  # one teacher: no note
    # a rebuild within the tolerance (another thread count or CPU) is the same teacher
    rebuilt = row("sst2", "svdllm", "ratio 4, per-layer, no fine-tuning", 81.0, 88.005, old)
    assert report.teacher_generations(data[:1] + data[2:] + [rebuilt]) == ""
    assert "88.00 (2 rows, 2026-11-22 to 2026-11-23)" in report.teacher_generations(
        data + [rebuilt]
    )
    # every row measured against an earlier teacher than the one the teacher row shows
    assert "90.00 (1 row, 2026-11-22); the teacher row shows 88.00." in report.teacher_generations(
        data[:2]
    )
    # the drop is taken from each row's own teacher: svd lost 10 points, fwsvd 8
    table = report.factorize_targets(data[:3])
    assert "| svd | 10.00 |" in table and "| fwsvd | 8.00 |" in table


def test_steps_latency_takes_the_layers_time_and_checks_the_target(report):
    def row(groups, n, b1, b32):
        extras = {
            "layer_ratio_b1": b1,
            "layer_ratio_b32": b32,
            "model_ratio_b1": b1 + 0.05,
            "model_ratio_b32": b32 + 0.02,
            "embeddings_ms_b1": 0.5,
            "embeddings_ms_b32": 3.0,
        }
        return _row("sst2", f"latency-g{groups}-ln", f"N={n} euler", b1, **extras)

    data = [row(1, 6, 1.0, 1.0), row(1, 3, 0.51, 0.50), row(2, 3, 0.56, 0.49), row(2, 6, 1, 1)]
    text = report.steps_latency(data)
    assert text.index("| latency-g1-ln | N=6 euler |") < text.index("| latency-g1-ln | N=3 euler")
    assert "| latency-g1-ln | N=3 euler | 0.510 | 0.500 | 0.560 | 0.520 | 0.50 / 3.0 |" in text
    assert "a = 1, latency-g1-ln, batch 1 | 0.510 (loaded) | met |" in text
    assert "later variant, not a replacement: layer latency" in text
    assert "a = 1, latency-g2-ln, batch 1 | 0.560 (loaded) | missed by" in text
    assert "a = 1, latency-g2-ln, batch 32 | 0.490 (loaded) | met" in text
    assert report.steps_latency([_row("sst2", "shared-g1", "N=3 euler", 80.0)]) == ""


def test_coverage_does_not_count_a_task_with_only_its_teacher_row(report):
    rows = [_row(t, "cost-eff-A", "no early exit", 80.0) for t in ("sst2", "stsb", "cola")]
    rows += [_row(t, "teacher", "full", 85.0) for t in ("mrpc", "rte")]
    text = report.coverage("slim", rows)
    assert text.startswith("**Incomplete**") and "still to run: mrpc, rte" in text
    rows += [_row(t, "cost-eff-A", "no early exit", 80.0) for t in ("mrpc", "rte")]
    assert report.coverage("slim", rows).startswith("Tasks measured: cola, mrpc, rte, sst2")


def test_constant_floor_and_its_standard_error_come_from_the_labels(report):
    acc = report.constant_floor("rte", [1] * 60 + [0] * 40)
    assert acc.metric == "accuracy" and acc.n == 100 and acc.score == pytest.approx(60.0)
    assert acc.se == pytest.approx(100 * (0.6 * 0.4 / 100) ** 0.5)  # 4.90
    assert acc.line == pytest.approx(60.0 + 2 * acc.se)
    assert acc.signal(69.9) and not acc.signal(69.7)
    f1 = report.constant_floor("mrpc", [1] * 70 + [0] * 30)  # always "paraphrase"
    assert f1.score == pytest.approx(100 * 2 * 0.7 / 1.7)
    assert f1.se == pytest.approx(100 * 2 / 1.7**2 * (0.7 * 0.3 / 100) ** 0.5)
    assert report.constant_floor("cola", [1] * 70 + [0] * 30).se == pytest.approx(10.0)
    stsb = report.constant_floor("stsb", [float(i % 5) for i in range(102)])
    assert (stsb.score, stsb.se) == (0.0, pytest.approx(10.0))


def _floors(report):
    return {
        "sst2": report.Floor("sst2", "accuracy", 50.0, 2.0, 872),  # line 54
        "rte": report.Floor("rte", "accuracy", 52.7, 3.0, 277),  # line 58.7
    }


def test_no_signal_cells_enter_no_mean_and_no_verdict(report, monkeypatch):
    monkeypatch.setattr(report, "_CURRENT_TEACHERS", [])  # no teacher is "first" here
    floors = _floors(report)
    rows = []
    for task, teacher, plugin in (("sst2", 88.0, 87.5), ("rte", 56.68, 55.0)):
        rows.append(_row(task, "teacher", "full", teacher))
        p = _row(task, "plugin", "k4-ffn", plugin, saved_flops_128=0.46)
        p["reference_score"], p["latency_ratio_b32"] = teacher, 0.6
        rows.append(p)
    text = report.plugins_targets(rows, floors=floors)
    assert "| rte | 56.68 (no signal) | 55.00 (no signal) |" in text
    assert "drop averaged over sst2 (rte: no signal, left out); FLOPs and latency" in text
    assert "over sst2, rte:" in text
    assert "| k4-ffn score drop <= 1.0 point | 0.50 | met |" in text  # sst2 alone
    assert "| 1 seed |" in text
    # a row clear of the line counts even where a neighbour's does not
    assert report.has_signal(rows[1], floors, 88.0)
    assert not report.has_signal(rows[3], floors, 56.68)
    assert not report.has_signal({**rows[3], "score": 60.0}, floors, 56.68)  # the teacher
    assert report.has_signal({**rows[3], "metric": "cosine"}, floors)  # another metric
    # a second seed that scored only: the scores merge, the timed run's latency stays
    again = {**rows[1], "score": 86.5, "seed": 43, "latency_ratio_b32": None}
    seeded = [*rows[:1], {**rows[1], "seed": 42}, again, *rows[2:]]
    two = report.plugins_targets(seeded, floors=floors)
    assert "| sst2 | 88.00 | 87.00 ± 0.71 | +1.00 | 46.0% | 0.600 (loaded) |" in two
    assert "a task of several seeds enters with its mean" in two
    assert "| 2 seeds |" in two
    # a scores-only re-run against a rebuilt teacher is shown, with the timed run's latency
    rebuilt = {**again, "reference_score": 88.5, "score": 88.0}
    teachers = [{**rows[0], "score": 88.5, "date": "2026-11-23T00:00:00+00:00"}]
    monkeypatch.setattr(report, "_CURRENT_TEACHERS", teachers)
    shown = report._pick([{**rows[1], "seed": 42}, rebuilt], "sst2", "k4-ffn", "plugin")
    assert shown["score"] == 88.0 and shown["latency_ratio_b32"] == 0.6
    assert "seed 42" in shown["extras"]["latency_from"]
    assert report.timing_short(shown) == "loaded, another seed's run"
    # a borrowed latency that the protocol re-timed keeps its first measurement with it
    extras = {
        **rows[1].get("extras", {}),
        "retime": {"ratio_b32": 0.55, "ratio_b32_spread": [0.54, 0.56]},
        "latency_before_retime": {"latency_ratio_b1": 0.9, "latency_ratio_b32": 0.6},
    }
    retimed = {**rows[1], "seed": 42, "latency_ratio_b32": 0.55, "extras": extras}
    shown = report._pick([retimed, rebuilt], "sst2", "k4-ffn", "plugin")
    assert shown["latency_ratio_b32"] == 0.55
    assert report._first_timed(shown)["latency_ratio_b32"] == 0.6
    monkeypatch.setattr(report, "_CURRENT_TEACHERS", [])
    untimed = report.plugins_targets([rows[0], again], floors=floors)
    assert "- (not timed)" in untimed and "| - (timed on no task only) |" in untimed
    # every task without a signal: no mean at all, no verdict
    only_rte = report.plugins_targets(rows[2:], floors=floors)
    assert "averaged over no task (rte: no signal, left out)" in only_rte
    assert "| k4-ffn FLOPs saved at 128 >= 43% | 46.0% | met |" in only_rte  # costs stay
    assert "| k4-ffn score drop <= 1.0 point | - | not measured |" in only_rte
    # the raw table's evidence column and the one line at the top
    assert report.evidence(rows[3], floors, rows[2]).startswith("no signal")
    top = report.floors_section(floors, [rows[0], rows[2]])
    assert "| rte | accuracy | 277 | 52.70 | 3.00 | 58.70 | 56.68 (no signal) |" in top
    assert "**Below the line**: the current teacher of rte (56.68 against a line" in top
    assert "sst2 (" not in top.split("Below the line")[1]
    assert "not computed" in report.floors_section({}, [])


def test_steps_verdicts_give_no_signal_below_the_line(report):
    floors = {"sst2": report.Floor("sst2", "accuracy", 50.0, 2.0, 872)}
    text = report.steps_targets(_steps_rows(aware_a2=84.0, naive_a2=53.0, ratio_b32=0.5), floors)
    assert "| +31.00 | no signal (shared-g1-naive) |" in text
    summary = text.split("Every task at a glance")[1]
    assert "| sst2 | shared-g1-naive | 86.00 | - | no signal |" in summary


def test_verdicts_over_seeds_use_the_interval(report):
    def seeds(score, *spread, method="m", setting="s"):
        return [
            {**_row("sst2", method, setting, score + d), "seed": 42 + i}
            for i, d in enumerate((0.0, *spread))
        ]

    one = report._pick(seeds(80.0), "sst2", "s", "m")
    assert report.seed_label([one]) == "1 seed" and report.score_cell(one) == "80.00 (1 seed)"
    three = report._pick(seeds(80.0, 1.0, -1.0), "sst2", "s", "m")
    assert three["score"] == pytest.approx(80.0) and three["extras"]["seeds"] == [42, 43, 44]
    assert report.seed_label([three, one]) == "1 seed"  # the comparison's weakest side
    assert report.score_cell(three) == "80.00 ± 1.00 (3 seeds)"
    mean, sd, half = report.seed_interval([79.0, 80.0, 81.0])
    assert (mean, sd) == (pytest.approx(80.0), pytest.approx(1.0))
    assert half == pytest.approx(4.303 / 3**0.5, rel=1e-3)  # t(0.975, 2) sd / sqrt(3)
    # a target met by the mean but not by the whole interval is within noise
    assert report.target_verdict(three, 77.0, True).startswith("met (3 seeds")
    assert report.target_verdict(three, 79.5, True).startswith("within noise (3 seeds")
    assert report.target_verdict(three, 90.0, True).startswith("missed (3 seeds")
    assert report.target_verdict(one, 79.5, True) == "met (1 seed)"
    # X beats Y: the interval of the difference of the means over seeds
    lo = report._pick(seeds(70.0, 1.0, -1.0, method="b"), "sst2", "s", "b")
    assert report.difference_verdict(three, lo).startswith("met (3+ seeds, difference +10.00")
    assert report.difference_verdict(lo, three).startswith("missed")
    close = report._pick(seeds(80.5, 1.0, -1.0, method="c"), "sst2", "s", "c")
    assert report.difference_verdict(close, three).startswith("not resolved")
    assert report.difference_verdict(three, one) is None  # one seed: McNemar or plain
    assert report._better(three, lo).startswith("met (3+ seeds")
    assert "1 seed" in report._better(three, one)
    # seeds merge only against one teacher: a row of another reference stays out
    other = [{**r, "reference_score": 90.0} for r in seeds(80.0, 1.0)]
    mixed = [{**other[0], "reference_score": 86.0, "seed": 7}, *other]
    assert report._pick(mixed, "sst2", "s", "m")["extras"].get("seeds") is None
    # rows of one setting with the same seed are not seeds: the first is kept
    same = [{**r, "seed": 42} for r in seeds(80.0, 1.0)]
    assert report._pick(same, "sst2", "s", "m")["score"] == 80.0


def test_references_the_recipe_no_longer_rebuilds_are_marked(report):
    teachers = [
        {**_row("mrpc", "teacher", "full", 86.16), "date": "2026-11-23T05:35:27+00:00"},
        {**_row("conll2003", "teacher", "full", 90.58), "date": "2026-11-22T09:41:43+00:00"},
    ]
    for t in teachers:
        t["metric"] = "f1"
    rebuilt = {**_row("mrpc", "plugin", "k4", 80.0), "metric": "f1", "reference_score": 86.16}
    rebuilt["date"] = "2026-11-24T00:00:00+00:00"
    assert not report.first_teacher(rebuilt, teachers)
    assert report.first_teacher({**rebuilt, "reference_score": 86.94}, teachers)  # another
    assert not report.first_teacher({**rebuilt, "reference_score": 86.1608}, teachers)  # rebuild
    assert report.first_teacher({**rebuilt, "reference_score": 86.1627}, teachers)  # another
    conll = {**rebuilt, "task": "conll2003", "reference_score": 90.58}
    assert report.first_teacher(conll, teachers)  # a teacher from before seeded heads
    assert not report.first_teacher({**rebuilt, "task": "sst2"}, teachers)  # no teacher row


def test_timing_labels_say_how_each_latency_was_taken(report):
    row = {**_row("sst2", "m", "s", 80.0), "latency_ratio_b32": 0.6}
    assert report.timing_label(row) == "timed under load, not re-timed"
    assert report.timing_short(row) == "loaded"
    quiet = {**row, "extras": {"timing_conditions": "quiet (other jobs paused), one run"}}
    assert report.timing_short(quiet) == "quiet, no spread"
    retimed = {**row, "extras": {"retime": {"ratio_b32_spread": [0.58, 0.61]}}}
    assert report.timing_label(retimed) == "re-timed by the protocol, spread 0.580-0.610"
    loaded = {**row, "extras": {"retime": {"ratio_b32_spread": [0.5, 0.7], "quiet": False}}}
    assert report.timing_short(loaded).endswith("under load (? per core)")
    text = report.latency_provenance([row, quiet, retimed, _row("sst2", "m", "t", 1.0)])
    assert "1 row timed under load, not re-timed" in text and "3 rows" not in text


def test_a_result_file_the_report_does_not_know_gets_a_generic_section(report):
    rows = [
        {**_row("sst2", "served", "batch 8", 88.0), "latency_ratio_b1": 0.9},
        {"endpoint": "/v1/classify", "p50_ms": 12.0, "command": "x", "date": "d", "machine": "m"},
    ]
    text = report.render_section("newbench", rows, {}, "newbench.json")
    assert text.startswith("## newbench\n")
    assert "Raw rows: `benchmarks/results/newbench.json`" in text
    assert "1 row timed under load, not re-timed" in text
    graded = report.render_section("otherbench", rows[:1], {}, "otherbench.json")
    assert "| evidence |" in graded and "| loaded; seed ? |" in graded
    assert "### Targets" not in graded


def test_rows_of_a_seed_study_get_a_seed_column(report):
    rows = [{**_row("sst2", "m", "t", 80.0 + s), "seed": s} for s in (42, 43)]
    text = report.render_section("otherbench", rows, {}, "otherbench.json")
    assert "| task | method | setting | seed | score |" in text
    assert "| sst2 | m | t | 43 | 123" in text
    one = report.render_section("otherbench", rows[:1], {}, "otherbench.json")
    assert "| seed |" not in one


def test_slim_target_rows_say_first_written_or_later_and_how_noisy(report):
    def pt(method, setting, score, mflops):
        r = _row("sst2", method, setting, score)
        r["flops_dynamic"], r["reference_score"], r["seed"] = mflops * 1e6, 88.30, 42
        return r

    rows = [
        pt("teacher", "full", 88.30, 541),
        pt("cost-eff-A", "patience 3", 80.39, 44),
        pt("cost-eff-C-steps4x", "entropy < 0.3", 86.01, 64),
        pt("cost-eff-B", "entropy < 0.7", 78.21, 38),
    ]
    floors = {"sst2": report.Floor("sst2", "accuracy", 50.92, 1.69, 872)}
    text = report.slim_targets(rows, floors)
    assert (
        "| cost-eff-A | as first written | patience 3 | 80.39 | 91.0% | 1/12.3 | missed by" in text
    )
    assert "| cost-eff-B | as first written |" in text
    later = next(line for line in text.splitlines() if line.startswith("| cost-eff-C-steps4x"))
    assert "| later variant |" in later and "met (1 seed), within noise" in later
    assert report.slim_variant("multi-exit-steps4x") == "later variant"
    assert report.slim_variant("cost-eff-last-exit-A") == "as first written"


def test_slim_target_seed_study_keeps_the_first_run_and_adds_an_interval(report):
    """With seeds 43 and 44 beside the first run (42), the target table keeps the first
    run's row and verdict, then gives the mean over seeds of each seed's best row within
    the budget and of the first run's threshold on every seed, with the interval verdict;
    the other seeds' rows never lift the first run's best."""

    def pt(method, setting, score, mflops, seed):
        r = _row("sst2", method, setting, score)
        r["flops_dynamic"], r["reference_score"], r["seed"] = mflops * 1e6, 88.30, seed
        return r

    c = "cost-eff-C-steps4x"
    rows = [
        pt("teacher", "full", 88.30, 541, 42),
        pt(c, "entropy < 0.3", 86.01, 64, 42),
        pt(c, "entropy < 0.2", 85.00, 66, 42),
        pt(c, "entropy < 0.3", 83.00, 60, 43),
        pt(c, "entropy < 0.2", 90.00, 66, 43),  # seed 43's best: another threshold
        pt(c, "entropy < 0.3", 84.00, 70, 44),  # over the budget (67.7 MFLOPs) on seed 44
        pt(c, "entropy < 0.2", 84.50, 67, 44),
    ]
    text = report.slim_targets(rows, {})
    lines = [line for line in text.splitlines() if line.startswith(f"| {c}")]
    assert len(lines) == 3
    assert lines[0].startswith(
        f"| {c}, seed 42 (the first run) | later variant | entropy < 0.3 | 86.01 |"
    )
    assert "met (1 seed)" in lines[0]
    each = lines[1]
    assert "seeds 42, 43, 44, each seed's best threshold" in each
    assert "entropy < 0.3 / entropy < 0.2 / entropy < 0.2" in each
    mean, sd, _ = report.seed_interval([86.01, 90.00, 84.50])
    assert f"| {mean:.2f} ± {sd:.2f} |" in each
    shares = [100 * x / 88.30 for x in (86.01, 90.00, 84.50)]
    m, _, half = report.seed_interval(shares)
    assert f"within noise (3 seeds, 95% interval {m - half:.2f} to {m + half:.2f})" in each
    assert lines[2].endswith("| missed: seed 44 has no row within the budget |")
    assert "the first run's threshold (entropy < 0.3)" in lines[2]
    # three seeds all well over the line: met over the interval
    good = [pt("teacher", "full", 88.30, 541, 42)] + [
        pt(c, "entropy < 0.3", 87.0 + 0.1 * i, 60, seed) for i, seed in enumerate((42, 43, 44))
    ]
    good_lines = [
        ln for ln in report.slim_targets(good, {}).splitlines() if ln.startswith(f"| {c}")
    ]
    # every seed's best is the first run's threshold: one row says both, not two alike
    assert len(good_lines) == 2
    assert "the first run's threshold (entropy < 0.3), each seed's best" in good_lines[1]
    assert "met (3 seeds, 95% interval" in good_lines[1]


def test_slim_curves_compare_seed_by_seed_where_both_have_seeds(report):
    def pt(method, setting, score, mflops, seed):
        r = _row("sst2", method, setting, score)
        r["flops_dynamic"], r["seed"] = mflops * 1e6, seed
        return r

    rows = [pt("teacher", "full", 90.0, 500, 42)]
    for seed, (mine, base) in {42: (86.0, 82.0), 43: (85.0, 81.5), 44: (87.0, 82.5)}.items():
        rows += [
            pt("cost-eff-C-steps4x", "entropy < 0.3", mine, 100, seed),
            pt("multi-exit-steps4x", "entropy < 0.6", base, 100, seed),
        ]
    rows.append(pt("truncated-1", "first 1 layers, fine-tuned", 84.0, 100, 42))
    text = report.slim_curves(rows)
    gaps = [4.0, 3.5, 4.5]
    m, sd, half = report.seed_interval(gaps)
    assert (
        f"| sst2 | 4x | multi-exit (no pruning) | 100-100 (seed 42) | {m:+.2f} ± {sd:.2f} | {m:+.2f} "
        f"| met (3 seeds (42, 43, 44), 95% interval {m - half:+.2f} to {m + half:+.2f}) |"
    ) in text
    # the cut teacher has one seed: the first run of each, not the best over seeds (87)
    assert "| sst2 | 4x | truncated + fine-tuned | 100-100 | +2.00 | +2.00 | met (1 seed) |" in text
    # a margin whose sign changes between seeds is not resolved
    rows += [pt("cost-eff-C-steps4x", "entropy < 0.5", 70.0, 90, 43)]
    rows = [r for r in rows if not (r["seed"] == 43 and r["method"] == "multi-exit-steps4x")]
    rows.append(pt("multi-exit-steps4x", "entropy < 0.6", 95.0, 100, 43))
    assert "not resolved (3 seeds (42, 43, 44)" in report.slim_curves(rows)


def test_serve_section_shows_its_rows_and_targets(report, monkeypatch, tmp_path):
    """Serve rows carry no task/method: the section still shows their own columns, the
    plot link and the verdicts serve.py wrote beside them."""
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    (tmp_path / "serve.md").write_text("- 3x load: adaptive ...: **not met** (0.000 vs 0.000)\n")
    (tmp_path / "serve.png").write_bytes(b"png")
    rows = [
        {
            "policy": "adaptive",
            "load_multiplier": "trace",
            "sent": 10,
            "slo_attainment": 0.5,
            "goodput": 1.0,
            "p50_ms": 1.0,
            "p99_ms": 2.0,
            "share_429": 0.0,
            "accuracy_answered": 90.0,
            "effective_accuracy": 45.0,
            "capacity_full": 80.0,
            "capacity_fastest": 160.0,
            "valid": True,
        }
    ]
    text = report.render_section("serve", rows, {}, "serve.json")
    assert "| policy | load_multiplier |" in text and "| adaptive | trace |" in text
    assert "[serve.png](benchmarks/results/serve.png)" in text
    assert "### Targets" in text and "**not met**" in text


def _retimed(row: dict, b1: float, b32: float, spread=(0.9, 1.1), **rec) -> dict:
    """``row`` as the protocol re-timed it (stand-in unless told), the old ratios kept."""
    before = {k: row.get(k) for k in ("latency_ratio_b1", "latency_ratio_b32")}
    record = {
        "ratio_b1": b1,
        "ratio_b32": b32,
        "ratio_b1_spread": [b1 * spread[0], b1 * spread[1]],
        "ratio_b32_spread": [b32 * spread[0], b32 * spread[1]],
        "stand_in": "same-shape stand-in (...)",
        **rec,
    }
    extras = {**row["extras"], "latency_before_retime": before, "retime": record}
    return {**row, "latency_ratio_b1": b1, "latency_ratio_b32": b32, "extras": extras}


def test_a_re_timed_steps_target_keeps_its_first_measurement_beside_the_new_one(report):
    """The steps latency target as first written keeps its in-run value and verdict; a
    re-time of both the a = 2 and the a = 1 rows adds its own labelled row (their ratio)."""
    rows = _steps_rows(aware_a2=84.0, naive_a2=60.0, ratio_b32=0.52)
    rows = [
        _retimed(r, 0.6, 1.0)
        if r["method"] == "shared-g1-step-aware" and "N=6" in r["setting"]
        else _retimed(r, 0.3, 0.58)
        if r["method"] == "shared-g1-step-aware"
        else r
        for r in rows
    ]
    text = report.steps_targets(rows)
    assert "(whole model; the target as first written) | 0.520 (loaded) | met |" in text
    again = "| the same target, re-timed by the protocol (a = 2 over a = 1"
    assert again in text
    line = next(x for x in text.splitlines() if x.startswith(again) and "0.580" in x)
    assert "same-shape stand-in" in line and line.endswith("| missed by 0.030 |")
    assert "spread 0.475-0.709" in line  # 0.58*0.9 / (1.0*1.1), 0.58*1.1 / (1.0*0.9)


def test_latency_provenance_counts_kinds_and_summarises_their_spread(report):
    rows = [{**_row("sst2", "m", str(i), 80.0), "latency_ratio_b32": 0.5} for i in range(3)]
    rows = [_retimed(rows[0], 0.5, 0.5, (0.9, 1.1)), _retimed(rows[1], 0.5, 0.5, (0.99, 1.01))]
    rows.append({**_row("sst2", "m", "x", 80.0), "latency_ratio_b32": 0.5})
    rows.append(_retimed(_row("sst2", "m", "y", 80.0), 0.5, 0.5, (0.95, 1.05)))
    del rows[-1]["extras"]["retime"]["stand_in"]
    text = report.latency_provenance(rows)
    assert "2 rows re-timed by the protocol on a same-shape stand-in (spread over rounds at" in text
    assert "median 20.0%, widest 20.0%" in text  # 2 rows: the upper median is the widest
    assert "1 row re-timed by the protocol (spread over rounds at batch 32: median 10.0%" in text
    assert "1 row timed under load, not re-timed" in text
    assert report.timing_short(rows[0]) == "re-timed, spread 0.450-0.550, same-shape stand-in"


def test_the_plugin_latency_target_keeps_the_earlier_measurement_and_adds_the_re_time(report):
    rows = []
    for task in ("sst2", "mrpc"):
        rows.append({**_row(task, "teacher", "full", 88.0), "latency_ratio_b32": 1.0})
        plugin = _row(task, "plugin", "k4-ffn", 87.5, saved_flops_128=0.46)
        plugin = {**plugin, "latency_ratio_b32": 0.64}
        plugin["extras"]["timing_conditions"] = "re-timed on a quiet machine, no spread recorded"
        rows.append(_retimed(plugin, 0.9, 0.66) if task == "sst2" else plugin)
    text = report.plugins_targets(rows, floors={})
    assert "| k4-ffn batch-32 latency <= 0.65x | 0.640 (quiet, no spread) | met |" in text
    assert (
        "| the same target, re-timed by the protocol over 1 of 2 tasks (the row above keeps "
        "the earlier measurement; each task's spread is in its row) | 0.650 (re-timed by the "
        "protocol on a same-shape stand-in) | met |"
    ) in text


def test_seeds_of_a_teacher_independent_setting_merge_across_teachers(report):
    """steps' shared models do not depend on the task teacher: seed 42 (first teacher) and
    seed 43 (current teacher) of one setting merge into one mean; other rows do not."""
    first = {**_row("sst2", "shared-g2", "N=3 euler", 80.0), "seed": 42, "reference_score": 88.6468}
    again = {**_row("sst2", "shared-g2", "N=3 euler", 78.0), "seed": 43, "reference_score": 88.3028}
    assert report._pick([first, again], "sst2", "N=3 euler")["score"] == 78.0  # current teacher
    first["extras"]["teacher_independent"] = True
    merged = report._pick([first, again], "sst2", "N=3 euler")
    assert merged["score"] == 79.0 and merged["extras"]["seed_scores"] == [80.0, 78.0]


def test_the_stand_in_check_summary_counts_agreeing_pairs(report):
    def pair(name, over1, over32, agree1, agree32):
        extras = {
            "stand_in_over_trained_b1": over1,
            "stand_in_over_trained_b32": over32,
            "agrees_b1": agree1,
            "agrees_b32": agree32,
        }
        return {**_row("sst2", "stand-in check", name, None), "extras": extras}

    text = report.stand_in_summary(
        [pair("a", 1.01, 0.97, True, True), pair("b", 0.95, 1.06, False, True)]
    )
    assert "| 1 | 1 of 2 | 0.950-1.010 |" in text and "| 32 | 2 of 2 | 0.970-1.060 |" in text


def test_plugin_variant_comparison_uses_one_teacher_and_the_seeds(report, monkeypatch):
    """`-cls` against the plain plugin: both sides from one teacher's runs (the current
    one where both have them), judged by the interval over seeds with several, "within
    noise" for one run's difference under 2 SE, and "no signal" below the floor."""
    teachers = [{**_row("sst2", "teacher", "full", 88.30), "date": "2026-11-23T00:00:00+00:00"}]
    monkeypatch.setattr(report, "_CURRENT_TEACHERS", teachers)
    floors = {"sst2": report.Floor("sst2", "accuracy", 50.0, 1.0, 872)}  # line 52, 2 SE = 2

    def plugin(setting, score, seed, ref):
        r = _row("sst2", "plugin", setting, score)
        r["seed"], r["reference_score"] = seed, ref
        return r

    first = [plugin("k4-ffn-cls", 88.0, 42, 88.65), plugin("k4-ffn", 87.5, 42, 88.65)]
    rows = [_row("sst2", "teacher", "full", 88.30), *first]
    text = "\n".join(report.plugin_variant_comparison(rows, "k4-ffn-cls", "k4-ffn", floors))
    assert "| sst2 | 88.65 (first teacher) | 88.00 (1 seed) | 87.50 (1 seed) | +0.50 |" in text
    assert "within noise (under 2 SE of one run, 1.00; 1 seed)" in text
    # the plain plugin re-run on the current teacher alone: still compared on the first one
    rows.append(plugin("k4-ffn", 80.0, 43, 88.30))
    text = "\n".join(report.plugin_variant_comparison(rows, "k4-ffn-cls", "k4-ffn", floors))
    assert "| 88.00 (1 seed) | 87.50 (1 seed) | +0.50 |" in text
    # three seeds of each on the current teacher: the current teacher's runs, Welch's interval
    for seed, cls, base in ((43, 85.0, 80.0), (44, 85.5, 80.4), (45, 84.6, 79.6)):
        rows.append(plugin("k4-ffn-cls", cls, seed, 88.30))
        if seed != 43:
            rows.append(plugin("k4-ffn", base, seed, 88.30))
    text = "\n".join(report.plugin_variant_comparison(rows, "k4-ffn-cls", "k4-ffn", floors))
    assert "| sst2 | 88.30 | 85.03 ± 0.45 (3 seeds) | 80.00 ± 0.40 (3 seeds) | +5.03 |" in text
    assert "| met (3+ seeds, difference +5.03, 95% interval +4.0" in text
    close = [
        r if r["setting"] != "k4-ffn-cls" or r["seed"] == 42 else {**r, "score": r["score"] - 5}
        for r in rows
    ]
    text = "\n".join(report.plugin_variant_comparison(close, "k4-ffn-cls", "k4-ffn", floors))
    assert "| not resolved (3+ seeds, difference +0.03" in text
    # a single run below the floor is no signal, never a verdict
    low = [rows[0], plugin("k4-ffn-cls", 51.0, 42, 88.30), plugin("k4-ffn", 60.0, 42, 88.30)]
    text = "\n".join(report.plugin_variant_comparison(low, "k4-ffn-cls", "k4-ffn", floors))
    assert "| no signal (k4-ffn-cls) |" in text
    # runs of two different teachers only: shown, not judged
    apart = [rows[0], plugin("k4-ffn-cls", 88.0, 42, 88.65), plugin("k4-ffn", 80.0, 43, 88.30)]
    text = "\n".join(report.plugin_variant_comparison(apart, "k4-ffn-cls", "k4-ffn", floors))
    assert "not compared: no teacher both were measured against" in text
    assert report.plugin_variant_comparison(rows[:1], "k4-ffn-cls", "k4-ffn", floors) == []


def test_factorize_pair_table_merges_samples_and_judges_by_their_interval(report):
    """svdllm against fwsvd per task and ratio: calibration samples (``--seed``) merge into
    mean ± std and the verdict uses Welch's interval over them; one sample each is judged
    against 2 SE of the dev metric; a row below the floor line is no signal."""
    floors = {"sst2": report.Floor("sst2", "accuracy", 50.0, 1.0, 872)}  # line 52, 2 SE = 2

    def row(method, ratio, score, seed):
        r = _row("sst2", method, f"ratio {ratio}, per-layer, no fine-tuning", score)
        r["seed"] = seed
        return r

    rows = [_row("sst2", "teacher", "full", 88.0)]
    for seed, (a, b) in zip((42, 43, 44), ((86.6, 83.4), (86.2, 81.9), (85.8, 82.9))):
        rows += [row("svdllm", 2, a, seed), row("fwsvd", 2, b, seed)]
    rows += [row("svdllm", 4, 81.0, 42), row("fwsvd", 4, 80.0, 42)]
    rows += [row("svdllm", 10, 51.0, 42), row("fwsvd", 10, 60.0, 42)]
    text = "\n".join(report.factorize_pair_table(rows, "svdllm", "fwsvd", floors))
    assert "| sst2 | 2 | 86.20 ± 0.40 (3 seeds) | 82.73 ± 0.76 (3 seeds) | +3.47 | met (3+" in text
    assert "| sst2 | 4 | 81.00 (1 seed) | 80.00 (1 seed) | +1.00 | within noise (under 2 SE" in text
    assert "| sst2 | 10 | 51.00 (1 seed) | 60.00 (1 seed) | -9.00 | no signal (svdllm) |" in text
    # a spread that swallows the difference: not resolved
    wide = [r if r["method"] != "fwsvd" or r["seed"] != 43 else {**r, "score": 90.0} for r in rows]
    text = "\n".join(report.factorize_pair_table(wide, "svdllm", "fwsvd", floors))
    assert (
        "| sst2 | 2 | 86.20 ± 0.40 (3 seeds) | 85.43 ± 3.96 (3 seeds) | +0.77 | not resolved"
        in text
    )
    assert report.factorize_pair_table(rows, "svdllm-grouped", "fwsvd-grouped", floors) == []


def _decoder_rows(method: str, setting: str, scores: list[float]) -> list[dict]:
    rows = []
    for seed, score in zip((42, 43, 44), scores, strict=False):
        row = _row("wikitext2", method, setting, score, teacher_independent=True)
        rows.append({**row, "metric": "perplexity", "seed": seed, "reference_score": score + 1})
    return rows


def test_decoder_claims_are_judged_over_seeds(report):
    """The decoder table merges a setting's seeds (their references, each model's own N = 6
    perplexity, differ); a claim is "met" over seeds only when Welch's interval of the
    perplexity gap is above 0, and one run says "1 seed"."""
    rows = (
        _decoder_rows("decoder-shared-g1-step-aware", "N=3 euler", [184.0, 185.0, 186.0])
        + _decoder_rows("decoder-shared-g1-naive", "N=3 euler", [220.0, 222.0, 224.0])
        + _decoder_rows("decoder-shared-g1-step-aware", "N=2 euler", [188.0, 200.0, 230.0])
        + _decoder_rows("decoder-shared-g1-naive", "N=2 euler", [190.0, 240.0, 200.0])
        + _decoder_rows("decoder-unshared", "N=3 first", [204.0])
        + _decoder_rows("decoder-unshared", "N=3 drop-euler", [195.0])
    )
    text = report.decoder_claims(rows)
    line = next(x for x in text.splitlines() if "below naive at a = 2" in x)
    assert "185.0 ± 1.0 (3 seeds)" in line and "| +37.0 |" in line and "| met (3+ seeds" in line
    line = next(x for x in text.splitlines() if "below naive at a = 3" in x)
    assert "not resolved (3+ seeds" in line
    line = next(x for x in text.splitlines() if "3-layer cut (drop-euler)" in x)
    assert "195.0 (1 seed)" in line and line.endswith("| met (1 seed; no interval) |")
    worse = _decoder_rows("decoder-shared-g1-step-aware", "N=3 euler", [199.0])
    assert "missed (1 seed; no interval)" in report.decoder_claims(
        worse + _decoder_rows("decoder-unshared", "N=3 drop-euler", [195.0])
    )


def test_rows_that_draw_nothing_are_not_flagged_for_a_missing_seed(report):
    """``seed ?`` marks a row whose seed is unknown, not a training-free one (``SEED_FREE``)."""
    plain = {**_row("sst2", "truncation", "k4-truncate", 70.0), "seed": None}
    free = {**plain, "extras": {"seed_note": report.SEED_FREE + " (a baseline)"}}
    assert "seed ?" in report.evidence(plain, {})
    assert "seed ?" not in report.evidence(free, {})


def test_frontier_seed_study_judges_target_1_on_every_seed(report):
    """Each seed's scores against the first run's latency ratios and ort-int8's; the first
    run's winning point gets its margin over the line (teacher - 1.0) with an interval over
    seeds; the untimed seed rows stay out of the per-thread table."""

    def fr(method, setting, engine, score, b1=None, b32=None, seed=42, study=False):
        return {
            "task": "sst2",
            "method": method,
            "setting": setting,
            "engine": engine,
            "metric": "accuracy",
            "score": score,
            "reference_score": 88.3,
            "latency_ratio_b1": b1,
            "latency_ratio_b32": b32,
            "flops": 1e8,
            "threads": None if study else 1,
            "seed": seed if method == "stack" or study else None,
            "extras": {"seed_study": True} if study else {},
        }

    fast = "svdllm2+int8+exits: exits=entropy:0.05"
    first = [
        fr("teacher", "fp32", "eager", 88.3, 1.0, 1.0),
        fr("ort-int8", "int8", "onnx-int8", 88.0, 0.21, 0.65),
        fr("stack", fast, "onnx-int8", 87.39, 0.17, 0.56),
        fr("stack", fast, "eager", 86.81, 0.41, 0.53),  # slower than ort-int8 at b1
    ]
    targets = [
        {"task": "sst2", "threads": 1, "target": 1, "met": True, "by": f"{fast} on onnx-int8"}
    ]
    seeds = []
    for seed, score in ((43, 87.10), (44, 87.50)):
        seeds += [
            fr("teacher", "fp32", "eager", 88.3, seed=seed, study=True),
            fr("stack", fast, "onnx-int8", score, seed=seed, study=True),
            fr("stack", fast, "eager", 88.0, seed=seed, study=True),  # close, but slow
        ]
    text = report.frontier_seed_study(first + seeds, targets)
    line = next(ln for ln in text.splitlines() if ln.startswith("- sst2, 1 thread(s)"))
    # seed 43's point is 1.2 below the teacher: no point meets target 1 on that seed
    assert "met on 2 of 3 seeds" in line
    assert f"42: {fast} on onnx-int8; 43: none; 44: {fast} on onnx-int8" in line
    margins = [87.39 - 87.3, 87.10 - 87.3, 87.50 - 87.3]
    m, sd, half = report.seed_interval(margins)
    assert f"{m:+.2f} ± {sd:.2f} points from the line (87.30)" in line
    assert f"95% interval {m - half:+.2f} to {m + half:+.2f}: within noise of the line" in line
    # every seed within the line: met on every seed
    better = [
        dict(r, score=87.9) if r["setting"] == fast and r["engine"] == "onnx-int8" else r
        for r in seeds
    ]
    assert "met on every seed" in report.frontier_seed_study(first + better, targets)
    # seed 42 re-scored beside the others: its study rows count, the first run's are shown
    again = [
        dict(fr("teacher", "fp32", "eager", 88.3, seed=42, study=True), machine="AMD EPYC, 2"),
        dict(fr("stack", fast, "onnx-int8", 87.0, seed=42, study=True), machine="AMD EPYC, 2"),
        dict(fr("stack", fast, "eager", 88.0, seed=42, study=True), machine="AMD EPYC, 2"),
    ]
    rescored = report.frontier_seed_study(
        [dict(r, machine="Intel Xeon, 2") for r in first]
        + [dict(r, machine="AMD EPYC, 2") for r in seeds]
        + again,
        targets,
    )
    assert "met on 1 of 3 seeds" in rescored and "42: none; 43: none" in rescored
    assert f"| {fast} | onnx-int8 | 87.39 | 87.00 | 87.10 | 87.50 |" in rescored
    assert "the first run on Intel Xeon, its seed study on AMD EPYC" in rescored
    assert "0.00 points over the points without int8, 1.19 over those with int8" in rescored
    # the per-thread table shows only the timed rows
    table = report.frontier_table(first + seeds, {})
    assert table.count("| 1 | stack |") == 2 and "| None |" not in table
