"""COST-EFF (slenderized multi-exit models) against the simpler alternatives.

    python benchmarks/slim.py                       # every task with a finished teacher
    python benchmarks/slim.py --tasks rte --quick   # smoke run (minutes)

Per task, from its MiniLM-L6 teacher (benchmarks/teachers.py):
- ``teacher``: the full model;
- ``multi-exit``: the full-size multi-exit assistant (no pruning), thresholds swept;
- ``cost-eff-A`` / ``cost-eff-B``: the pipeline (assistant -> iterative joint pruning ->
  recovery) at two target widths: A = the paper's shape scaled to MiniLM (2 heads, FFN 128,
  embedding rank 64), B = 6 heads, FFN 512, rank 128; thresholds swept (entropy and
  patience; regression: patience at several tolerances). With ``--ablation``, A again with
  importance from the last exit only. ``--widths C`` adds a width between them (4 heads,
  FFN 256, rank 128), sized so that early exit can reach SST-2's 1/8-FLOPs budget;
- ``deebert``: exits trained on the frozen teacher, thresholds swept;
- ``static-A``: pruning to width A with the last exit only (no early exit);
- ``truncated-L``: the teacher cut to its first L layers and fine-tuned (L = 1, 2, 3).
Each curve point: dev score, mean FLOPs per example (each example charged for the layers
and exits it ran, at its own length), parameters. For the operating points at
``--latency-thresholds``, CPU latency ratio to the teacher at batch 1 (a pass over 32 dev
examples one at a time: where an example exits depends on the example) and 32 (batched
early exit), in one interleaved run, at three thresholds (how the batch-32 latency
follows the share of rows that leave early). Rows go to benchmarks/results/slim.json after
every model; runs (resumable) to runs/slim/<task>/ (models with exits: runs/slim/<task>/mean-exits/).
Exits read the mean of the real tokens by default (``--exit-pool first``: the paper's first
token; those methods are named ``*-cls``): benchmarks/exit_probe.py shows why.
``--seed N`` (other than 42) is a seed study: the chosen widths and baselines train with
that seed into ``<folder>-s<N>`` run folders and are scored but not timed (their latency is
the seed-42 row's); their rows carry ``seed`` N beside the seed-42 rows of the same setting.
``--schedule-scale K`` multiplies every distillation stage's steps (assistant, pruning,
recovery; DeeBERT's exits) by K; those models are run and named apart (``*-steps<K>x``), so
a longer schedule is measured beside the default one, not instead of it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from report import COLUMNS as REPORT_COLUMNS  # noqa: E402  (benchmarks/ is on sys.path)
from report import command_line

from gearshift.data import get_task
from gearshift.jobs import (
    TEACHER_RECIPES,
    TaskData,
    dev_texts,
    evaluate,
    finetune,
    teacher_dir,
    training_finished,
)
from gearshift.measure import (
    OperatingPoint,
    ResultsSink,
    analytic_flops,
    compare_latency,
    count_parameters,
    fixed_threads,
    flops_per_example,
    forward_fn,
    make_batch,
    markdown_table,
    plot_tradeoff,
)
from gearshift.methods.slim import Entropy, MultiExitModel, Patience, SlimConfig, load_multi_exit
from gearshift.methods.slim.jobs import deebert_job, evaluate_exits, truncate_layers
from gearshift.methods.slim.train import run_slim
from gearshift.runtime import load_pretrained, load_tokenizer, save_model
from gearshift.train import TrainConfig

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "slim.json"
GLUE5 = ["sst2", "mrpc", "rte", "stsb", "cola"]
MODEL = "minilm-l6"
WIDTHS = {
    "A": dict(heads=2, ffn=128, word_rank=64),
    "B": dict(heads=6, ffn=512, word_rank=128),
    # between A and B, sized so that exits can bring it under 1/8 of the teacher's FLOPs
    # (SST-2's target budget); not in the default run
    "C": dict(heads=4, ffn=256, word_rank=128),
}
THRESHOLDS = [0.0, 0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
COLUMNS = REPORT_COLUMNS["slim"]


DEFAULT_SEED = 42  # every row before the seed study (and the teachers' recipe)
B1_EXAMPLES = 32  # dev examples timed one by one for the batch-1 latency ratio


def schedule(args: argparse.Namespace) -> dict[str, int]:
    """Steps of each distillation stage: the flags times ``--schedule-scale``."""
    k = args.schedule_scale
    return {
        "ta_steps": round(args.ta_steps * k),
        "steps_per_iteration": round(args.steps_per_iteration * k),
        "recovery_steps": round(args.recovery_steps * k),
    }


def schedule_tag(args: argparse.Namespace) -> str:
    """The suffix of method names and run folders under a scaled schedule (none at 1)."""
    return "" if args.schedule_scale == 1 else f"-steps{args.schedule_scale:g}x"


def slim_config(args: argparse.Namespace, **kw: Any) -> SlimConfig:
    base = dict(
        exit_pool=args.exit_pool,
        iterations=args.iterations,
        **schedule(args),
        batch_size=32,
        calibration_batches=args.calibration_batches,
        seed=args.seed,
    )
    base.update(kw)
    return SlimConfig(**base)


def stand_in(row: dict, base: Any):
    """``row``'s model rebuilt with its shapes from ``base`` (pre-trained MiniLM-L6 with the
    task's head), for the shared timing protocol (benchmarks/retime.py --stand-in): the
    teacher, the static width-A model (the first heads and neurons kept: which ones does not
    change the arithmetic) and the truncated baselines. Rows with exits return None: where
    an example exits depends on the trained weights, so only the trained model can be
    re-timed (re-run the benchmark)."""
    import copy
    import re

    from gearshift.methods.slim.prune import factorize_word_embedding, prune

    method, extras = row["method"], row.get("extras", {})
    if method == "teacher":
        return copy.deepcopy(base), None
    if method.startswith("truncated-"):
        return truncate_layers(base, int(method.removeprefix("truncated-"))), None
    if not method.startswith("static-") or "widths" not in extras:
        return None
    found = re.fullmatch(
        r"heads (\S+), ffn (\S+)(?:, emb rank (\d+))?", str(extras["widths"]).strip()
    )
    if not found:
        return None
    L = base.config.num_layers

    def per_layer(text: str) -> list[int]:
        values = [int(v) for v in text.split("/")]
        return values * L if len(values) == 1 else values

    heads, ffn = per_layer(found[1]), per_layer(found[2])
    model = prune(base, [list(range(h)) for h in heads], [list(range(f)) for f in ffn])
    if found[3]:
        model = factorize_word_embedding(model, int(found[3]))
    return model.eval(), None


def run_task(task_name: str, args: argparse.Namespace, command: str, sink: ResultsSink) -> None:
    task = get_task(task_name)
    root = teacher_dir(task.name, MODEL)
    if not training_finished(root):
        print(f"[slim] skipping {task.name}: no finished teacher in {root}", flush=True)
        return
    folder = str(root / "best")
    teacher = load_pretrained(folder).eval()
    tok = load_tokenizer(folder)
    train = TaskData.load(task, tok, "train", args.train_limit)
    dev = TaskData.load(task, tok, "dev", args.dev_limit)
    texts = dev_texts(task, args.profile_limit)
    batches = {size: make_batch(tok, texts, size) for size in (1, 32)}
    singles = [make_batch(tok, [t], 1) for t in texts]
    teacher_score = evaluate(teacher, dev)[task.main_metric]
    # the same closed form and the same dev examples as the curves' points (each at its length)
    lengths = [len(f["input_ids"]) for f in dev.features]

    def dev_flops(config) -> float:
        return sum(analytic_flops(config, n) for n in lengths) / len(lengths)

    teacher_flops = dev_flops(teacher.config)
    out = Path(args.runs) / task.name
    # models with exits depend on what the exits read; first-token runs keep the old folders
    exits_out = out if args.exit_pool == "first" else out / f"{args.exit_pool}-exits"
    suffix = "-cls" if args.exit_pool == "first" else ""  # method names of first-token exits
    tag = schedule_tag(args)  # a scaled schedule's models and rows are kept apart
    study = args.seed != DEFAULT_SEED  # a seed study: trained with that seed, scored, untimed
    run_tag = tag + (f"-s{args.seed}" if study else "")  # its run folders sit beside seed 42's
    meta = {
        "task": {"name": task.name, "kind": task.kind, "label_names": list(task.label_names or [])},
        "teacher": folder,
    }

    def point(
        method, setting, score, flops, params, extras, latency=(None, None), seed=args.seed
    ) -> dict:
        if study and latency == (None, None):
            extras = extras | {
                "timing": f"not timed: a seed study (seed {args.seed}); the seed-{DEFAULT_SEED} "
                "row of this setting has the latency"
            }
        return OperatingPoint(
            task=task.name,
            model=MODEL,
            method=method,
            setting=setting,
            metric=task.main_metric,
            score=score,
            reference_score=teacher_score,
            flops_dynamic=flops,
            params=params,
            latency_ratio_b1=latency[0],
            latency_ratio_b32=latency[1],
            command=command,
            extras=extras,
            seed=seed,
        ).to_dict()

    # Batch 1: where an example exits depends on the example, so one timed "batch" is a pass
    # over B1_EXAMPLES dev examples one at a time (the same ones for teacher and candidate).
    b1_set = singles[:B1_EXAMPLES]

    def latency(model, criterion=None) -> tuple[float | None, float | None]:
        if study:
            return None, None

        def run_model(batch, m=model, c=criterion):
            if isinstance(m, MultiExitModel):
                with m.criterion(c):
                    return m(**batch)
            return m(**batch)

        ratios = []
        for size in (1, 32):
            if size == 1:
                ref = lambda _, f=forward_fn(teacher): [f(b) for b in b1_set]  # noqa: E731
                cand = lambda _: [run_model(b) for b in b1_set]  # noqa: E731
            else:
                ref, cand = forward_fn(teacher), run_model
            cmp = compare_latency(
                {"teacher": ref, "candidate": cand},
                batches[size],
                warmup=1 if args.quick else 3,
                repeats=args.latency_repeats,
                threads=args.threads,
            )
            ratios.append(cmp.ratios["candidate"])
        return ratios[0], ratios[1]

    if not study:  # the teacher is trained once, by its recipe (seed 42)
        sink.add(
            [
                point(
                    "teacher",
                    "full",
                    teacher_score,
                    teacher_flops,
                    count_parameters(teacher),
                    {"teacher_dir": folder},
                    (1.0, 1.0),
                    seed=DEFAULT_SEED,
                )
            ]
        )

    def curve(name: str, model: MultiExitModel, extras: dict) -> None:
        """The sweep on dev; latency (batched exit) and counted FLOPs at --latency-thresholds
        (classification) or patience 1 at --latency-tolerances (regression): how latency
        follows the exit share."""
        start = time.perf_counter()
        name += tag + suffix
        extras = extras | {"exit_pool": model.exit_config.pool, "schedule": schedule(args)}
        rows = evaluate_exits(model, task, tok, THRESHOLDS, args.dev_limit)
        if task.kind == "classification":
            timed = [Entropy(t) for t in args.latency_thresholds]
        else:
            timed = [Patience(1, tolerance=t) for t in args.latency_tolerances]
        measured = {}
        for crit in timed:
            measured[crit.describe()] = (
                latency(model, crit),
                flops_per_example_exit(model, singles, crit),
            )
        points = []
        for r in rows:
            lat, counted = measured.get(r["criterion"], ((None, None), None))
            points.append(
                point(
                    name,
                    r["criterion"],
                    r["score"],
                    r["flops"],
                    count_parameters(model.base),
                    extras
                    | {
                        "mean_exit_layer": r["mean_exit_layer"],
                        "exit_share": r["exit_share"],
                        "flops_ratio_to_teacher": r["flops"] / teacher_flops,
                        **(
                            {"flops_counted_on_profile_texts": counted}
                            if counted is not None
                            else {}
                        ),
                    },
                    lat,
                )
            )
        sink.add(points)
        print(
            f"[slim] {task.name} {name}: {len(points)} points ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        print(markdown_table(points, COLUMNS), flush=True)

    # the assistant (full size, exits) and COST-EFF at two widths
    assistant_done = False
    for label, widths in WIDTHS.items():
        if label not in args.widths:
            continue
        variants = [("cost-eff", "all-exits")] + (
            [("cost-eff-last-exit", "last-exit")] if args.ablation and label == "A" else []
        )
        for name, importance in variants:
            cfg = slim_config(args, importance=importance, **widths)
            ta_dir = exits_out / f"cost-eff-A{run_tag}" / "ta" / "model"
            stages = run_slim(
                teacher,
                train.features,
                train.collator,
                cfg,
                exits_out / f"{name}-{label}{run_tag}",
                tok,
                meta,
                progress=not args.quick,
                assistant_dir=ta_dir if (ta_dir / "gearshift.json").is_file() else None,
            )
            if not assistant_done:
                curve("multi-exit", load_multi_exit(stages[0].model_dir), {"widths": "full"})
                assistant_done = True
            curve(
                f"{name}-{label}",
                load_multi_exit(stages[-1].model_dir),
                {"widths": stages[-1].widths, "importance": importance},
            )
    # DeeBERT: exits on the frozen teacher
    if "deebert" in args.baselines:
        d = deebert_job(
            folder,
            task.name,
            exits_out / f"deebert{run_tag}",
            slim_config(args, heads=12, ffn=1536),
            args.train_limit,
            progress=not args.quick,
        )
        curve("deebert", load_multi_exit(d), {"widths": "full, backbone frozen"})
    # static pruning to width A, no exits
    if "static" in args.baselines:
        cfg = slim_config(args, exits=False, **WIDTHS["A"])
        stages = run_slim(
            teacher,
            train.features,
            train.collator,
            cfg,
            out / f"static-A{run_tag}",
            tok,
            meta,
            progress=not args.quick,
        )
        model = load_multi_exit(stages[-1].model_dir)
        score = evaluate(model.base, dev)[task.main_metric]
        sink.add(
            [
                point(
                    f"static-A{tag}",
                    "no exits",
                    score,
                    dev_flops(model.base.config),
                    count_parameters(model.base),
                    {"widths": stages[-1].widths, "schedule": schedule(args)},
                    latency(model.base),
                )
            ]
        )
    # the teacher cut to its first L layers, fine-tuned
    if "truncated" in args.baselines:
        for L in args.truncate:
            cut = truncate_layers(teacher, L)
            cut_dir = out / f"truncated-{L}{run_tag.removeprefix(tag)}"
            save_model(cut, cut_dir / "init", tok, {"task": meta["task"]})
            recipe = TEACHER_RECIPES.get(task.name, {})
            res = finetune(
                str(cut_dir / "init"),
                task.name,
                cut_dir,
                TrainConfig(
                    output_dir=str(cut_dir),
                    epochs=args.truncated_epochs or recipe.get("epochs", 3.0),
                    batch_size=32,
                    learning_rate=recipe.get("learning_rate", 1e-4),
                    warmup_ratio=0.06,
                    save_every=200,
                    seed=args.seed,
                    progress=not args.quick,
                ),
                train_limit=args.train_limit,
                dev_limit=args.dev_limit,
                resume=True,
            )
            model = load_pretrained(str(res.model_dir)).eval()
            sink.add(
                [
                    point(
                        f"truncated-{L}",
                        f"first {L} layers, fine-tuned",
                        res.score,
                        dev_flops(model.config),
                        count_parameters(model),
                        {"train_seconds": res.train_seconds},
                        latency(model),
                    )
                ]
            )


def plot_task(rows: list[dict], task: str, folder: Path) -> None:
    """``slim_<task>.png``: every method's curve of the first runs (seed 42, or unseeded
    first-token rows); a seed study's runs move each exit threshold's FLOPs, so their
    points are not averaged into these curves (the report compares them seed by seed)."""
    first = [r for r in rows if r["task"] == task and r.get("seed") in (None, DEFAULT_SEED)]
    if first:
        plot_tradeoff(
            first,
            folder / f"slim_{task}.png",
            x="flops_dynamic",
            title=f"{task}: COST-EFF vs baselines (MiniLM-L6, seed {DEFAULT_SEED})",
        )


def flops_per_example_exit(model: MultiExitModel, singles: list, criterion) -> float:
    """FLOPs counted on the real early-exit run (batch 1, the profile texts)."""
    with model.criterion(criterion):
        return flops_per_example(model, singles)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", nargs="+", default=GLUE5)
    p.add_argument(
        "--widths",
        nargs="*",
        default=["A", "B"],
        choices=list(WIDTHS),
        help="COST-EFF target widths to run; none (``--widths`` alone) runs only --baselines",
    )
    p.add_argument(
        "--baselines",
        nargs="*",
        default=["deebert", "static", "truncated"],
        choices=["deebert", "static", "truncated"],
        help="baselines to run; none (``--baselines`` alone) runs only the COST-EFF widths",
    )
    p.add_argument("--ablation", action="store_true", help="also width A with last-exit importance")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--ta-steps", type=int, default=300)
    p.add_argument("--steps-per-iteration", type=int, default=150)
    p.add_argument("--recovery-steps", type=int, default=300)
    p.add_argument(
        "--schedule-scale",
        type=float,
        default=1.0,
        help="multiply every distillation stage's steps; the models are named *-steps<K>x",
    )
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--truncate", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--truncated-epochs", type=float)
    p.add_argument("--train-limit", type=int)
    p.add_argument("--dev-limit", type=int)
    p.add_argument("--profile-limit", type=int, default=128)
    p.add_argument(
        "--latency-thresholds",
        type=float,
        nargs="+",
        default=[0.05, 0.3, 0.6],
        help="entropy thresholds timed at batch 1 and 32 (batched exit), FLOPs counted",
    )
    p.add_argument(
        "--latency-tolerances",
        type=float,
        nargs="+",
        default=[0.1, 0.5, 1.0],
        help="regression tasks: patience 1 at these tolerances timed and FLOPs counted",
    )
    p.add_argument("--latency-repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"training seed; another than {DEFAULT_SEED} is a seed study (scored, untimed)",
    )
    p.add_argument(
        "--exit-pool",
        choices=["first", "mean"],
        default="mean",
        help="what every exit reads: the mean of the real tokens (default; see "
        "benchmarks/exit_probe.py) or the first token (the paper; method names get '-cls')",
    )
    p.add_argument("--runs", default="runs/slim")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.schedule_scale <= 0:
        p.error(f"--schedule-scale must be above 0 (got {args.schedule_scale:g}); 1 is the default")
    if args.quick:
        args.iterations, args.ta_steps, args.steps_per_iteration, args.recovery_steps = 1, 2, 1, 1
        args.calibration_batches = 1
        args.train_limit = args.train_limit or 64
        args.dev_limit = args.dev_limit or 32
        args.profile_limit = min(args.profile_limit, 8)
        args.latency_repeats = 2
        args.truncate = args.truncate[:1]
        args.truncated_epochs = 1.0
        if args.runs == "runs/slim":
            args.runs = "runs/slim-quick"
        if args.out == RESULTS:
            args.out = Path("runs/slim-quick/slim.json")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line(__file__, argv)
    sink = ResultsSink(args.out, "slim")
    with fixed_threads(args.threads):
        for task in args.tasks:
            run_task(task, args, command, sink)
            plot_task(sink.rows, get_task(task).name, args.out.parent)
    if not sink.new:
        print("[slim] nothing measured (no finished teacher?)")
        return 1
    print(f"[slim] {len(sink.new)} rows written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
