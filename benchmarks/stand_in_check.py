"""Does a same-shape stand-in take the time of the trained model it stands in for?

    python benchmarks/stand_in_check.py --tasks sst2 mrpc            # quiet machine, ~5 min
    python benchmarks/stand_in_check.py --tasks sst2 --warmup 1 --repeats 2 --rounds 1 --allow-load

``benchmarks/retime.py --stand-in`` re-times rows whose trained model is gone on a model of
the same shapes built from pre-trained MiniLM-L6 (each benchmark's ``stand_in``). The
premise: a forward pass's time depends on the shapes it multiplies, not on the values of the
weights, where nothing in it branches on the data. This script tests the premise on this
machine with the trained models that are kept: for each task, the teacher and the saved
compose and steps models are timed beside their stand-ins, all interleaved in one process
with the stand-in reference (pre-trained MiniLM-L6 with the task's head) by the shared
protocol (gearshift.measure.retime). A row per pair gives both ratios to that reference,
their spreads over rounds and ``stand_in_over_trained`` (1 = the same time); the report
counts the pairs whose stand-in ratio lies within the trained model's spread, widened by the
larger of the two spreads.

Pairs (where the folder is on this machine):

- the task's teacher (``benchmarks/teachers.py``) against the pre-trained model with a head;
- SVD-LLM ratio 2, no fine-tuning (``runs/compose/<task>/svdllm2``) against factorize's
  stand-in (plain SVD at the same ratio);
- slim widths 3/4 (``runs/compose/<task>/slim75``) against slim's width stand-in;
- the k=4 "ffn" plugin trained on the teacher (``runs/compose/<task>/plugin-teacher``)
  against plugins' stand-in (an untrained plugin of the same config);
- a trained two-group step-aware shared model (``runs/steps/*/<task>/best``) at N = 6 and
  N = 3 Euler steps against steps' stand-in.

Rows go to benchmarks/results/stand_in_check.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from report import RESULTS, command_line
from retime import STAND_IN_MODEL, add_protocol_args, base_model, build_stand_in, protocol_of

from gearshift.data import get_task
from gearshift.data.taskdata import dev_texts
from gearshift.jobs import teacher_dir
from gearshift.measure import forward_fn, make_batch
from gearshift.measure.report import OperatingPoint, ResultsSink
from gearshift.measure.retime import retime
from gearshift.methods.plugins import load_plugin
from gearshift.methods.steps import step_plan
from gearshift.runtime import load_pretrained, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def pairs(task: Any, runs: Path) -> list[dict]:
    """The trained models kept for ``task`` and, for each, the row ``stand_in`` rebuilds it
    from (in the benchmark's own row format): name, benchmark, folder, plan (steps), row."""
    out = []
    best = teacher_dir(task.name) / "best"
    if best.is_dir():
        out.append(
            dict(name="teacher", benchmark="factorize", folder=best, row={"method": "teacher"})
        )
    svd = runs / "compose" / task.name / "svdllm2"
    if svd.is_dir():
        extras = dict(factorize_method="svdllm", target_ratio=2.0, mode="per-layer")
        row = {"method": "svdllm", "extras": {**extras, "protocol": "no-finetune"}}
        out.append(dict(name="svdllm ratio 2", benchmark="factorize", folder=svd, row=row))
    slim = runs / "compose" / task.name / "slim75"
    if slim.is_dir():
        cfg = load_pretrained(str(slim)).config
        heads = "/".join(str(cfg.layer_shape(i).num_heads) for i in range(cfg.num_layers))
        ffn = "/".join(str(cfg.layer_shape(i).intermediate_size) for i in range(cfg.num_layers))
        row = {"method": "static-75", "extras": {"widths": f"heads {heads}, ffn {ffn}"}}
        out.append(dict(name="slim widths 3/4", benchmark="slim", folder=slim, row=row))
    plugin = runs / "compose" / task.name / "plugin-teacher" / "plugin"
    if plugin.is_dir() and best.is_dir():
        row = {"method": "plugin", "setting": "k4-ffn"}
        out.append(
            dict(name="plugin k4-ffn", benchmark="plugins", folder=best, row=row, plugin=plugin)
        )
    for folder in sorted((runs / "steps").glob(f"shared-g2-step-aware-ln*/{task.name}/best")):
        for n in (6, 3):
            extras = dict(groups=2, layer_norms=True, n_steps=n, solver="euler")
            row = {"method": "shared-g2-step-aware-ln", "extras": extras}
            name = f"{folder.parents[1].name} N={n}"
            out.append(dict(name=name, benchmark="steps", folder=folder, row=row, steps=n))
        break  # one trained shared model is enough
    return out


def check_task(task_name: str, args: argparse.Namespace, command: str) -> list[dict]:
    import importlib

    task = get_task(task_name)
    found = pairs(task, args.runs)
    if not found:
        print(f"[stand-in check] {task.name}: no trained model kept here")
        return []
    base = base_model(task)
    tok = load_tokenizer(STAND_IN_MODEL)
    texts = dev_texts(task, args.profile_limit)
    batches = {size: make_batch(tok, texts, size) for size in (1, 32)}
    fns = {"reference": forward_fn(base)}
    for p in found:
        trained = load_pretrained(str(p["folder"])).eval()
        model, plan, why = build_stand_in(importlib.import_module(p["benchmark"]), p["row"], base)
        if model is None:
            print(f"  {p['name']}: {why}")
            continue
        real_plan = step_plan(trained.config, p["steps"]) if p.get("steps") else None
        if p.get("plugin"):
            real_plan = load_plugin(p["plugin"], trained).plan()
        fns[f"trained | {p['name']}"] = forward_fn(trained, real_plan)
        fns[f"stand-in | {p['name']}"] = forward_fn(model, plan)
    protocol = protocol_of(args)
    timed = retime(fns, batches, "reference", protocol, args.allow_load)
    rows = []
    for p in found:
        a, b = f"trained | {p['name']}", f"stand-in | {p['name']}"
        if a not in fns:
            continue
        extras: dict[str, Any] = {"trained_dir": str(p["folder"]), "protocol": vars(protocol)}
        for size, res in timed.items():
            extras[f"trained_b{size}"] = res.ratios[a]
            extras[f"trained_b{size}_spread"] = list(res.spread[a])
            extras[f"stand_in_b{size}"] = res.ratios[b]
            extras[f"stand_in_b{size}_spread"] = list(res.spread[b])
            extras[f"stand_in_over_trained_b{size}"] = res.ratios[b] / res.ratios[a]
            extras[f"agrees_b{size}"] = agrees(
                res.ratios[a], res.spread[a], res.ratios[b], res.spread[b]
            )
        rows.append(
            OperatingPoint(
                task=task.name,
                model=STAND_IN_MODEL,
                method="stand-in check",
                setting=p["name"],
                metric="",
                command=command,
                extras=extras,
            ).to_dict()
        )
        print(
            f"  {p['name']}: trained {extras['trained_b1']:.3f} / {extras['trained_b32']:.3f}, "
            f"stand-in {extras['stand_in_b1']:.3f} / {extras['stand_in_b32']:.3f} (b1 / b32)"
        )
    return rows


def agrees(a: float, a_spread: tuple, b: float, b_spread: tuple) -> bool:
    """Whether ratio ``b`` lies within ``a``'s spread over rounds widened on each side by the
    larger of the two spreads' half-widths (both are medians of noisy rounds)."""
    half = max(a_spread[1] - a_spread[0], b_spread[1] - b_spread[0]) / 2
    return a_spread[0] - half <= b <= a_spread[1] + half


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["sst2", "mrpc", "stsb"])
    p.add_argument("--runs", type=Path, default=ROOT / "runs")
    add_protocol_args(p, threads=1, warmup=3, repeats=10, rounds=3)
    p.add_argument("--out", type=Path, default=RESULTS / "stand_in_check.json")
    args = p.parse_args(argv)
    command = command_line(__file__, argv)
    sink = ResultsSink(args.out, "stand_in_check")
    for task in args.tasks:
        sink.add(check_task(task, args, command))
    if not sink.new:
        print("[stand-in check] nothing timed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
