"""The frontier: gearshift's methods and stacks on each engine against the practitioner's default.

For each task (SST-2, MRPC, STS-B) in one process: the fp32 teacher (the reference), torch
dynamic int8 of it (``torch-int8``), ONNX Runtime fp32 and dynamic int8 of it (``ort-fp32``,
``ort-int8``), single methods built on the spot (SVD factorization at ratios 2 and 4; any
folder given with --candidates), and stacks (``method: "stack"``, each named setting of every
stack folder under --stacks-dir/TASK/) on each engine (eager, onnx, onnx-int8; an exit
setting runs on the onnx engines as one graph per layer with the exit decision between them,
so its rows say whether segments beat eager). Every candidate is scored on the full
dev split; all candidates of a task are timed interleaved in one process, at batch 1 and 32
of real dev sentences, with fixed threads (1, then 2), by gearshift.measure.retime's protocol
(warm-up, 5 interleaved rounds, the median ratio and its (min, max) spread; it refuses a
busy machine). FLOPs are analytic per example over the dev batch (exits: at each row's exit).

Targets, evaluated per task and thread count and written under "targets":
  1. some stack scores within 1.0 point of the teacher and has a lower latency ratio than
     ort-int8 at batch 1 and at batch 32;
  2. every stack has latency ratio / FLOPs ratio <= 1.15 on its best engine.

The ort rows are the practitioner's default: the teacher exported through its Hugging Face
form and fused by ONNX Runtime's optimizer (what Optimum does), fp32 and dynamic int8
(gearshift.engine's "HF route"); stacks with plugins or factorized weights run the runtime's
own graph, exported so that ORT fuses its attention, LayerNorms and GELUs as well.

Real run (a quiet machine, teachers cached in ~/.cache/gearshift/teachers by
benchmarks/teachers.py; stacks built with `gearshift stack` under runs/stacks/TASK/, e.g.
`gearshift stack --model TEACHER --factorize svdllm:2 --int8 --plugin k4=PLUGIN_DIR
--exits EXITS_DIR --output runs/stacks/mrpc/svdllm2-int8-k4`):

    python benchmarks/frontier.py --stacks-dir runs/stacks
    # about 1-1.5 h: per task ~20 candidates x full dev scoring (~10 min) + 2 thread
    # counts x 2 batch sizes x 5 rounds of interleaved timing (~10 min each)

Seed study (the stacks' trained parts, plugins and exit heads, of another seed; scores and
FLOPs only, never timed): build seed N's stacks with `python benchmarks/compose.py --tasks
sst2 --seed N --build-only` (folders runs/compose/sst2/stacks-sN/), give them a task folder
(`mkdir -p runs/frontier-sN && ln -s ../compose/sst2/stacks-sN runs/frontier-sN/sst2`), then

    python benchmarks/frontier.py --tasks sst2 --seed N --stacks-dir runs/frontier-sN
    # ~10 min per task: the teacher and the first run's stacks, every engine, full dev

Its rows (``seed: N``, ``extras.seed_study``, no latency) join the results file beside the
first run's, whose stacks were compose.py's seed-42 build (the folders do not record a seed:
``extras.seed_note`` says so on those rows); the report judges target 1 on each seed with that seed's scores and the first
run's latency ratios (an exit stack's ratio moves with its exit rate: its FLOPs per seed are
in the rows).

CI / smoke (a tiny random teacher, 16 dev sentences, a stack with a random k2 plugin and
random exits, 2 rounds):

    python benchmarks/frontier.py --quick    # ~2 min; writes runs/frontier-quick/, not results/
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
from report import command_line  # benchmarks/ is on sys.path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "frontier.json"
TASKS = ["sst2", "mrpc", "stsb"]
ENGINES = ["eager", "onnx", "onnx-int8"]
TEACHER_ENGINES = {"eager": "teacher", "onnx": "ort-fp32", "onnx-int8": "ort-int8"}


# ---------------------------------------------------------------------- forms
def tiny_teacher(folder: Path, task) -> Path:
    """A tiny random BERT with the MiniLM tokenizer and the task's head (--quick only)."""
    import transformers as T

    from gearshift.runtime import load_hf, load_tokenizer, save_model

    if (folder / "gearshift.json").is_file():
        return folder
    tok = load_tokenizer("minilm-l6")
    labels = 1 if task.kind == "regression" else task.num_labels
    cfg = T.BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=130,
        num_labels=labels,
        problem_type="regression" if task.kind == "regression" else None,
    )
    torch.manual_seed(0)
    T.BertForSequenceClassification(cfg).save_pretrained(folder / "hf")
    return save_model(load_hf(str(folder / "hf")), folder, tokenizer=tok)


def tiny_stack(teacher):
    """A stack of the teacher with a random k=2 plugin and random exits (--quick only)."""
    from gearshift.methods.plugins import Plugin, PluginConfig
    from gearshift.methods.plugins.model import Plugins
    from gearshift.methods.slim.model import Exits
    from gearshift.runtime.stack import Stack

    torch.manual_seed(0)
    plugin = Plugin(PluginConfig(k=2, bottleneck=8, merge="learned"), teacher)
    regression = teacher.config.head.kind == "regression"
    exits = Exits(teacher.config, choices=["patience:1:0.5" if regression else 0.5])
    with torch.no_grad():
        for p in [*plugin.parameters(), *exits.parameters()]:
            p.normal_(std=0.05)
    base = copy.deepcopy(teacher)
    return Stack(base, {"plugins": Plugins({"k2": plugin}), "exits": exits.eval()}).eval()


def svd(teacher, ratio: float):
    from gearshift.methods.factorize.compress import compress
    from gearshift.methods.factorize.config import FactorizeConfig

    model, _ = compress(copy.deepcopy(teacher), FactorizeConfig(method="svd", ratio=ratio))
    return model.eval()


def forms(teacher, args, task_name: str) -> list[dict[str, Any]]:
    """(method, setting, model, stack setting, engines) of every candidate form."""
    from gearshift.api import load
    from gearshift.runtime.edits import quantize_int8

    out = [
        dict(method="teacher", setting="fp32", model=teacher, stack={}, engines=ENGINES),
        dict(
            method="torch-int8",
            setting="int8",
            model=quantize_int8(copy.deepcopy(teacher)),
            stack={},
            engines=["eager"],
        ),
    ]
    for r in args.ratios:
        out.append(
            dict(
                method="factorize-svd",
                setting=f"ratio={r:g}",
                model=svd(teacher, r),
                stack={},
                engines=ENGINES,
            )
        )
    for folder in args.candidates or []:
        model = load(folder)
        out.append(
            dict(method=Path(folder).name, setting="folder", model=model, stack={}, engines=ENGINES)
        )
    stacks = []
    if args.quick:
        stacks.append(("tiny", tiny_stack(teacher)))
    elif args.stacks_dir:
        root = Path(args.stacks_dir) / task_name
        for folder in sorted(p for p in root.glob("*") if (p / "gearshift.json").is_file()):
            stacks.append((folder.name, load(folder)))
    for name, stack in stacks:
        # an edited base (factorized, pruned, int8) is a point of its own; an unedited one is
        # the teacher, measured already
        cfg = stack.base.config
        edited = bool(cfg.forms) or cfg.word_rank is not None or cfg.blocks != teacher.config.blocks
        for label, setting in stack.settings().items():
            if not any(v is not None for v in setting.values()) and not edited:
                continue  # "full" on an unedited base: the teacher itself
            # exit settings run on the onnx engines as per-layer segments (engine/segments.py)
            out.append(
                dict(
                    method="stack",
                    setting=f"{name}: {label}",
                    model=stack,
                    stack=setting,
                    engines=ENGINES,
                )
            )
    return out


# ---------------------------------------------------------------------- measuring
def mean_flops(model, setting, batch) -> float:
    """Analytic FLOPs per example over ``batch`` (each row at its own length; with exits, up
    to the step it left after)."""
    from gearshift.measure.flops import analytic_flops

    lengths = batch["attention_mask"].sum(dim=1).tolist()
    exit_steps = [None] * len(lengths)
    if setting.get("exits") is not None:
        with torch.no_grad(), model.using(**setting):
            out = model(**batch)
        if out.exit_step is not None:
            exit_steps = out.exit_step.tolist()
    total = 0
    for n, e in zip(lengths, exit_steps):
        if hasattr(model, "base"):
            from gearshift.compose.flops import stack_flops

            total += stack_flops(model, int(n), setting or None, exit_after=e)
        else:
            total += analytic_flops(model.config, int(n))
    return total / len(lengths)


def size_on_disk(model, run, folder: Path, tokenizer) -> int:
    """Bytes of what would be shipped: the ONNX graph, or the saved model / stack weights."""
    if hasattr(run, "size_on_disk"):
        return run.size_on_disk()
    if not folder.exists():
        if hasattr(model, "base"):
            from gearshift.compose.io import save_stack

            save_stack(model, folder, tokenizer=tokenizer)
        else:
            from gearshift.runtime import save_model

            save_model(model, folder, tokenizer=tokenizer)
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """Both targets per (task, threads), each met or missed with its cause."""
    out = []
    for task in sorted({r["task"] for r in rows}):
        for threads in sorted({r["threads"] for r in rows if r["task"] == task}):
            rs = [r for r in rows if r["task"] == task and r["threads"] == threads]
            ref = next(r for r in rs if r["method"] == "teacher" and r["engine"] == "eager")
            ort8 = next((r for r in rs if r["method"] == "ort-int8"), None)
            stacks = [r for r in rs if r["method"] == "stack"]
            close = [s for s in stacks if s["score"] >= ref["score"] - 1.0]
            t1: dict[str, Any] = {"task": task, "threads": threads, "target": 1}
            if ort8 is None:
                t1.update(met=False, cause="no ort-int8 row")
            else:
                wins = [
                    s
                    for s in close
                    if s["latency_ratio_b1"] < ort8["latency_ratio_b1"]
                    and s["latency_ratio_b32"] < ort8["latency_ratio_b32"]
                ]
                if wins:
                    best = min(wins, key=lambda s: s["latency_ratio_b1"])
                    t1.update(met=True, by=f"{best['setting']} on {best['engine']}")
                elif not close:
                    t1.update(met=False, cause="no stack scores within 1.0 point of the teacher")
                else:
                    best = min(close, key=lambda s: s["latency_ratio_b1"] + s["latency_ratio_b32"])
                    t1.update(
                        met=False,
                        cause=(
                            f"fastest stack within 1.0 point ({best['setting']} on "
                            f"{best['engine']}) has ratios b1 {best['latency_ratio_b1']:.2f} / b32 "
                            f"{best['latency_ratio_b32']:.2f} against ort-int8's "
                            f"{ort8['latency_ratio_b1']:.2f} / {ort8['latency_ratio_b32']:.2f}"
                        ),
                    )
            out.append(t1)
            misses = []
            for setting in sorted({s["setting"] for s in stacks}):
                engines = [s for s in stacks if s["setting"] == setting]
                best = min(engines, key=lambda s: s["latency_ratio_b1"])
                flops_ratio = best["flops"] / ref["flops"]
                worst = max(best["latency_ratio_b1"], best["latency_ratio_b32"]) / flops_ratio
                if worst > 1.15:
                    misses.append(f"{setting} on {best['engine']}: {worst:.2f}")
            out.append(
                {
                    "task": task,
                    "threads": threads,
                    "target": 2,
                    "met": bool(stacks) and not misses,
                    "cause": "; ".join(misses) if misses else ("no stacks" if not stacks else None),
                }
            )
    return out


def run_task(task_name: str, args, command: str) -> list[dict]:
    from gearshift.api import load
    from gearshift.data import get_task
    from gearshift.data.taskdata import TaskData, dev_texts
    from gearshift.engine import build
    from gearshift.jobs import teacher_dir
    from gearshift.measure.evaluate import evaluate
    from gearshift.measure.latency import make_batch
    from gearshift.measure.report import machine_description, now_iso
    from gearshift.measure.retime import QUICK, TimingProtocol, retime

    task = get_task(task_name)
    work = Path(args.work) / task.name
    if args.quick:
        teacher_folder = tiny_teacher(work / "teacher", task)
    else:
        teacher_folder = teacher_dir(task.name) / "best"
        if not (teacher_folder / "gearshift.json").is_file():
            raise SystemExit(
                f"no {task.name} teacher at {teacher_folder}: build it with "
                f"`python benchmarks/teachers.py --tasks {task.name}`"
            )
    teacher = load(teacher_folder)
    tok = teacher.tokenizer
    limit = 16 if args.quick else args.limit
    data = TaskData.load(task, tok, "dev", limit, 128, args.data_dir)
    texts = dev_texts(task, limit, args.data_dir)
    batches = {1: make_batch(tok, texts, 1), 32: make_batch(tok, texts, 32)}
    flops_batch = {
        k: v
        for k, v in make_batch(tok, texts, 32).items()
        if k != "token_type_ids" or teacher.config.type_vocab_size > 1
    }
    if args.seed is not None:
        return seed_rows(task, teacher, teacher_folder, data, flops_batch, args, command)
    cands = []
    for i, form in enumerate(forms(teacher, args, task.name)):
        for engine in form["engines"]:
            method = TEACHER_ENGINES[engine] if form["method"] == "teacher" else form["method"]
            if method == "ort-int8":
                form = dict(form, setting="int8")
            cands.append(
                dict(
                    form,
                    engine=engine,
                    method=method,
                    key=f"{i}:{method}|{form['setting']}|{engine}",
                )
            )
    rows: list[dict] = []
    scores: dict[str, float] = {}
    for threads in args.threads:
        protocol = (
            QUICK
            if args.quick
            else TimingProtocol(
                threads=threads, warmup=args.warmup, repeats=args.repeats, rounds=args.rounds
            )
        )
        runs = {}
        for c in cands:
            runs[c["key"]] = build(c["model"], c["engine"], threads=threads, setting=c["stack"])
        for c in cands:  # scores do not depend on the thread count: scored once
            if c["key"] not in scores:
                print(f"[{task.name}] scoring {c['key']}", file=sys.stderr)
                scores[c["key"]] = evaluate(runs[c["key"]], data)[task.main_metric]
        ref_key = next(c["key"] for c in cands if c["method"] == "teacher")
        fns = {k: (lambda b, r=r: r(**b)) for k, r in runs.items()}
        from dataclasses import asdict

        from gearshift.measure.retime import load_per_core

        load = load_per_core()
        timed = retime(fns, batches, ref_key, protocol, allow_load=args.quick or args.allow_load)
        for c in cands:
            k = c["key"]
            rows.append(
                {
                    "task": task.name,
                    "method": c["method"],
                    "setting": c["setting"],
                    "engine": c["engine"],
                    "metric": task.main_metric,
                    "score": scores[k],
                    "reference_score": scores[ref_key],
                    "latency_ratio_b1": timed[1].ratios[k],
                    "latency_ratio_b32": timed[32].ratios[k],
                    "flops": mean_flops(c["model"], c["stack"], flops_batch),
                    "size_on_disk": size_on_disk(
                        c["model"], runs[k], work / "saved" / k.split(":")[0], tok
                    ),
                    # which graph ran: the HF route or the runtime's own; dynamic, per
                    # length bucket, or per-layer segments (exits)
                    "graph": getattr(runs[k], "route", None),
                    "graph_mode": getattr(runs[k], "mode", None),
                    # nothing is trained here: a stack's adapters keep the seed of their own
                    # training run (benchmarks/compose.py: 42), which the folder does not record
                    "seed": None,
                    "command": command,
                    "date": now_iso(),
                    "machine": machine_description(),
                    "threads": threads,
                    "spread": {"b1": timed[1].spread[k], "b32": timed[32].spread[k]},
                    "examples": len(data.features) if hasattr(data, "features") else limit,
                    "teacher": str(teacher_folder),
                    "extras": {
                        "seed_note": seed_note(c),
                        "retime": {
                            "protocol": asdict(protocol),
                            "ratio_b1_spread": list(timed[1].spread[k]),
                            "ratio_b32_spread": list(timed[32].spread[k]),
                            "load_per_core": load,
                            "quiet": load <= protocol.max_load,
                        },
                    },
                }
            )
    return rows


def seed_note(cand: dict) -> str:
    """What a first-run row's score owes to a seed: nothing, unless a stack's trained part
    (plugin, exit heads) runs in its setting."""
    from gearshift.measure.report import SEED_FREE

    if cand["method"] == "stack" and any(v is not None for v in cand["stack"].values()):
        return (
            "the stack's trained parts keep the seed of their build (compose.py: 42 unless "
            "--seed); frontier.py --seed N scores seed N's"
        )
    return SEED_FREE + " (no trained part runs in this point)"


def first_run_stacks(task_name: str, output: Path) -> set[str]:
    """The stack folders (names) the first run measured on ``task_name``: a seed study
    scores the same ones."""
    import json

    if not output.is_file():
        return set()
    rows = json.loads(output.read_text()).get("rows", [])
    return {
        r["setting"].split(":")[0]
        for r in rows
        if r["task"] == task_name
        and r["method"] == "stack"
        and not r.get("extras", {}).get("seed_study")
    }


def seed_rows(task, teacher, teacher_folder, data, flops_batch, args, command) -> list[dict]:
    """Seed N's stacks (the first run's stack folders, with seed N's trained parts) and the
    teacher, scored on every engine and counted in FLOPs; untimed."""
    from gearshift.api import load
    from gearshift.engine import build
    from gearshift.measure.evaluate import evaluate
    from gearshift.measure.report import machine_description, now_iso

    names = first_run_stacks(task.name, args.output_path)
    if not names:
        raise SystemExit(
            f"no first-run stack rows for {task.name} in {args.output_path}: a seed study "
            "scores the stacks the first (timed) run measured; run that first"
        )
    root = Path(args.stacks_dir) / task.name
    missing = sorted(n for n in names if not (root / n / "gearshift.json").is_file())
    if missing:
        raise SystemExit(
            f"seed {args.seed}: no stack folder for {', '.join(missing)} under {root}; build them "
            f"with `python benchmarks/compose.py --tasks {task.name} --seed {args.seed} "
            "--build-only` and link its stacks-s<seed> folder there"
        )
    cands = [dict(name="teacher", setting="fp32", model=teacher, stack={}, engine="eager")]
    for name in sorted(names):
        stack = load(root / name)
        for label, setting in stack.settings().items():
            for engine in ENGINES:
                cands.append(
                    dict(
                        name="stack",
                        setting=f"{name}: {label}",
                        model=stack,
                        stack=setting,
                        engine=engine,
                    )
                )
    torch.set_num_threads(args.threads[0])
    rows, ref = [], None
    for c in cands:
        print(f"[{task.name} seed {args.seed}] {c['setting']} on {c['engine']}", file=sys.stderr)
        run = build(c["model"], c["engine"], threads=args.threads[0], setting=c["stack"])
        score = evaluate(run, data)[task.main_metric]
        ref = score if ref is None else ref  # the teacher comes first
        rows.append(
            {
                "task": task.name,
                "method": c["name"],
                "setting": c["setting"],
                "engine": c["engine"],
                "metric": task.main_metric,
                "score": score,
                "reference_score": ref,
                "latency_ratio_b1": None,
                "latency_ratio_b32": None,
                "flops": mean_flops(c["model"], c["stack"], flops_batch),
                "seed": args.seed,
                "command": command,
                "date": now_iso(),
                "machine": machine_description(),
                "threads": None,
                "examples": len(data.features) if hasattr(data, "features") else args.limit,
                "teacher": str(teacher_folder),
                "extras": {"seed_study": True},
            }
        )
    return rows


def merge_seed_rows(output: Path, rows: list[dict]) -> None:
    """A seed study's rows into the results file: the first run's rows and targets stay,
    an earlier seed study of the same seed and task is replaced (seed 42's study re-scores the
    first run's adapters, on this machine, beside the first run's rows)."""
    import json

    from gearshift.atomic import write_json_atomic

    data = json.loads(output.read_text())
    new = {(r["task"], r["seed"]) for r in rows}
    kept = [
        r
        for r in data["rows"]
        if not (r.get("extras", {}).get("seed_study") and (r["task"], r.get("seed")) in new)
    ]
    write_json_atomic(output, dict(data, rows=kept + rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--ratios", nargs="+", type=float, default=[2.0, 4.0], help="SVD ratios")
    parser.add_argument("--candidates", nargs="*", help="more single-method folders to include")
    parser.add_argument("--stacks-dir", help="stack folders, one subfolder per task")
    parser.add_argument("--limit", type=int, help="dev examples to score (default: all)")
    parser.add_argument("--data-dir", help="folder with the task files")
    parser.add_argument("--work", default="runs/frontier", help="saved candidates and teachers")
    parser.add_argument(
        "--output", help=f"results file (default: {RESULTS.relative_to(HERE.parent)})"
    )
    parser.add_argument("--allow-load", action="store_true", help="time on a busy machine anyway")
    from gearshift.measure.retime import TimingProtocol

    defaults = TimingProtocol()
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed calls")
    parser.add_argument(
        "--repeats", type=int, default=defaults.repeats, help="timed calls per round"
    )
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="interleaved rounds")
    parser.add_argument("--quick", action="store_true", help="smoke run on a tiny random teacher")
    parser.add_argument(
        "--seed",
        type=int,
        help="a seed study: score the first run's stacks built with this seed's trained parts "
        "(from --stacks-dir), untimed; the rows join the results file beside the first run's",
    )
    args = parser.parse_args(argv)
    if args.seed is not None and (args.quick or not args.stacks_dir):
        parser.error(
            "--seed scores seed N's stacks: give --stacks-dir with their task folders "
            "(and no --quick)"
        )
    if args.quick:
        args.ratios = [2.0]
        args.work = "runs/frontier-quick"
    output = Path(args.output or (Path(args.work) / "frontier.json" if args.quick else RESULTS))
    command = command_line(__file__, argv)
    args.output_path = output
    rows: list[dict] = []
    for task_name in args.tasks:
        rows.extend(run_task(task_name, args, command))
    if args.seed is not None:
        merge_seed_rows(output, rows)
        print(f"{len(rows)} seed-{args.seed} rows -> {output}")
        return 0
    targets = evaluate_targets(rows)
    from gearshift.atomic import write_json_atomic
    from gearshift.engine.tune import plot_frontier

    write_json_atomic(output, {"benchmark": "frontier", "rows": rows, "targets": targets})
    for task_name in args.tasks:
        pts = [
            dict(r, name=f"{r['method']} {r['setting']} {r['engine']}")
            for r in rows
            if r["task"] == task_name and r["threads"] == args.threads[0]
        ]
        plot_frontier(
            pts,
            None,
            output.parent / f"frontier_{task_name}.png",
            f"{task_name}, {args.threads[0]} thread(s)",
        )
    for t in targets:
        state = "met" if t["met"] else "MISSED"
        why = t.get("by") or t.get("cause") or ""
        print(f"{t['task']} threads={t['threads']} target {t['target']}: {state} {why}")
    print(f"{len(rows)} rows -> {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
