"""Compression plugins (Variator) against their teachers and training-free baselines.

    python benchmarks/plugins.py                          # every task whose teacher is finished
    python benchmarks/plugins.py --tasks rte --quick      # smoke run (a few minutes on 2 cores)
    python benchmarks/plugins.py --tasks sst2 --teacher minilm-l6 --quick
                                                          # no teacher yet: untrained head (smoke only)
    python benchmarks/plugins.py --retime --threads 1 --tasks sst2
                                                          # quiet machine: re-measure costs only
    python benchmarks/plugins.py --plot                   # redraw the plots from the rows

Per task: the teacher; plugins at k = 2, 4, 8 for placements "ffn" and "layer" (stage C:
hidden-state MSE to the frozen teacher, ``--steps`` optimizer steps each, at most
``--max-epochs`` passes over the training set); at k=4 the
variants first-token-kept ("-cls"), + KL to the teacher's logits ("+kl"), the paper's
64-wide restorer ("-r64") and stage A before stage C ("+A": ``--stage-a-steps`` on
WikiText-2 and the task's sentences against the pre-trained model, no labels); and at the
same k the training-free baselines: mean merging
(both placements) and truncation to ceil(n/k) tokens. Each row: dev score, FLOPs per
example (dev inputs at their own length, and at length 128; plugin cost included),
parameters, CPU latency ratio to the teacher at batch 1 and 32 measured in one interleaved
run. Rows go to ``benchmarks/results/plugins.json`` (rows of other tasks are kept), the plot
to ``benchmarks/results/plugins_<task>.png``; trained plugins to ``runs/plugins/<task>/``
(training resumes there).

A task whose cached teacher (``gearshift.jobs.teacher_dir``) has not finished training is
skipped: this script never starts teacher training (``benchmarks/teachers.py`` does).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from report import COLUMNS as REPORT_COLUMNS  # noqa: E402  (benchmarks/ is on sys.path)
from report import command_line

from gearshift.data import get_task
from gearshift.data.raw import raw_texts, text_features
from gearshift.jobs import (
    TaskData,
    dev_texts,
    model_for_task,
    seed_everything,
    teacher_dir,
    training_finished,
)
from gearshift.measure import (
    SEED_FREE,
    ResultsSink,
    fixed_threads,
    markdown_table,
    plot_points,
    plot_tradeoff,
)
from gearshift.methods.plugins import (
    Plugin,
    PluginConfig,
    load_plugin,
    mean_merging,
    truncation_plan,
)
from gearshift.methods.plugins.operating_points import (
    Candidate,
    candidate_from_row,
    measure_candidates,
    retime_rows,
)
from gearshift.methods.plugins.train import TargetCache, train_plugin
from gearshift.runtime import load_pretrained, load_tokenizer
from gearshift.train import TrainConfig

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "plugins.json"
TASKS = ["sst2", "mrpc", "rte", "stsb", "cola", "conll2003"]
COLUMNS = REPORT_COLUMNS["plugins"]


@dataclass
class Spec:
    """One plugin to train: its config, whether KL joins the loss, whether stage A
    pre-training comes first, its row name."""

    config: PluginConfig
    kl: bool = False
    stage_a: bool = False

    @property
    def name(self) -> str:
        name = self.config.name
        if self.config.bottleneck != PluginConfig.bottleneck:
            name += f"-r{self.config.bottleneck}"
        return name + ("+kl" if self.kl else "") + ("+A" if self.stage_a else "")


VARIANT_KINDS = ("cls", "kl", "r64", "A")


def plugin_specs(
    ks: list[int],
    placements: list[str],
    variants: bool,
    kinds: tuple[str, ...] = VARIANT_KINDS,
    stage_a_all: bool = False,
    settings: list[str] | None = None,
) -> list[Spec]:
    """The plugins to train: every k and placement (each with stage A first when
    ``stage_a_all``); with ``variants``, the k=4 variants of the given ``kinds`` (first token
    kept out, + KL, the paper's 64-wide restorer, stage A then C). ``settings`` keeps only
    the plugins of those row names (a seed run of one arm); a name that the other options
    do not make is an error that lists the names they do."""
    specs = [
        Spec(PluginConfig(k=k, placement=p), stage_a=stage_a_all) for k in ks for p in placements
    ]
    if variants:
        if "cls" in kinds:
            specs += [
                Spec(PluginConfig(k=4, placement=p, keep_first_token=True)) for p in placements
            ]
        if "kl" in kinds:
            specs.append(Spec(PluginConfig(k=4, placement="ffn"), kl=True))
        if "r64" in kinds:
            specs.append(Spec(PluginConfig(k=4, placement="ffn", bottleneck=64)))
        if "A" in kinds and not stage_a_all:
            specs.append(Spec(PluginConfig(k=4, placement="ffn"), stage_a=True))
    if settings:
        unknown = sorted(set(settings) - {spec.name for spec in specs})
        if unknown:
            raise ValueError(
                f"--settings {' '.join(unknown)}: no such plugin with these --ks, --placements "
                f"and variants; they make {', '.join(spec.name for spec in specs)}"
            )
        specs = [spec for spec in specs if spec.name in settings]
    return specs


def specs_of(args: argparse.Namespace) -> list[Spec]:
    """The plugins the command line asks for (``plugin_specs`` of its options)."""
    return plugin_specs(
        args.ks, args.placements, args.variants, args.variant_kinds, args.stage_a_all, args.settings
    )


DEFAULT_SEED = 42


def seed_suffix(seed: int) -> str:
    """The run folder suffix of a seed: none for the default (the folders of earlier runs),
    ``-seed<N>`` otherwise, so one seed never resumes another's checkpoints."""
    return "" if seed == DEFAULT_SEED else f"-seed{seed}"


def find_teacher(task_name: str, override: str | None) -> str | None:
    """The teacher folder to use, or None (with a message) when it is not ready."""
    if override:
        return override
    root = teacher_dir(task_name)
    best = root / "best"
    if training_finished(root) and (best / "gearshift.json").is_file():
        return str(best)
    print(
        f"[plugins] skipping {task_name}: its teacher in {root} has not finished training "
        "(run benchmarks/teachers.py first, or pass --teacher PATH)",
        flush=True,
    )
    return None


def stage_a_plugin(spec: Spec, task_name: str, args: argparse.Namespace) -> Path | None:
    """Stage A for a ``spec`` that has it: pre-train against the pre-trained MiniLM (no
    labels, no teacher) on WikiText-2 and the task's training sentences, as the issue asks;
    returns the plugin folder (None for specs without stage A)."""
    if not spec.stage_a:
        return None
    out = Path(args.runs) / task_name / spec.name / "stage-a"
    base, tok = load_pretrained("minilm-l6"), load_tokenizer("minilm-l6")
    texts = raw_texts("wikitext2", task_name, limit=args.stage_a_steps * args.batch_size // 2)
    feats, collate = text_features(tok, texts)
    cfg = TrainConfig(
        output_dir=str(out),
        max_steps=args.stage_a_steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_ratio=0.06,
        save_every=100,
        progress=not args.quick,
    )
    return train_plugin(
        base,
        Plugin(spec.config, base),
        feats,
        collate,
        cfg,
        resume=True,
        extra={"training": {"stage": "A", "text": f"wikitext2 + {task_name} sentences"}},
    ).plugin_dir


def run_task(task_name: str, teacher: str, args: argparse.Namespace, command: str) -> list[dict]:
    task = get_task(task_name)
    seed_everything(args.seed)  # an untrained "teacher"'s head (--teacher minilm-l6) is drawn here
    base, tok = model_for_task(teacher, task)
    base.eval()
    steps, batch = args.steps, args.batch_size
    train = TaskData.load(task, tok, "train", limit=args.train_limit or steps * batch)
    if args.max_epochs:  # small training sets (RTE, MRPC): no more than max_epochs passes
        steps = min(steps, max(1, math.ceil(args.max_epochs * len(train.features) / batch)))
    print(f"[plugins] {task.name}: {steps} stage-C steps of {batch} per plugin", flush=True)
    dev = TaskData.load(task, tok, "dev", limit=args.dev_limit)
    texts = dev_texts(task, args.profile_limit)
    candidates = [Candidate("full", "teacher", None, extras={"teacher": teacher})]
    cache = TargetCache()  # the teacher's targets, computed once per example for all plugins
    specs = specs_of(args)
    for spec in specs:
        init = stage_a_plugin(spec, task.name, args)
        plugin = load_plugin(init, base) if init else Plugin(spec.config, base)
        cfg = TrainConfig(
            output_dir=str(Path(args.runs) / task.name / (spec.name + seed_suffix(args.seed))),
            max_steps=steps,
            batch_size=batch,
            learning_rate=args.lr,
            warmup_ratio=0.06,
            save_every=100,
            seed=args.seed,
            progress=not args.quick,
        )
        start = time.perf_counter()
        res = train_plugin(
            base,
            plugin,
            train.features,
            train.collator,
            cfg,
            kl_weight=1.0 if spec.kl else 0.0,
            resume=True,
            cache=cache,
            extra={
                "training": {"stage": "C", "task": task.name, "init": str(init) if init else None}
            },
        )
        print(
            f"[plugins] {task.name} {spec.name}: trained {res.steps} steps in "
            f"{time.perf_counter() - start:.0f} s (final loss {res.final_loss})",
            flush=True,
        )
        candidates.append(
            Candidate(
                spec.name,
                "plugin",
                plugin.plan(),
                plugin.num_parameters(),
                {
                    "train_steps": res.steps,
                    "kl": spec.kl,
                    "stage_a": bool(init),
                    "plugin_dir": str(res.plugin_dir),
                },
            )
        )
    for k in args.ks:
        for placement in args.placements:
            mean = mean_merging(base, k, placement)
            candidates.append(Candidate(mean.config.name, "mean-merging", mean.plan()))
        candidates.append(Candidate(f"k{k}-truncate", "truncation", truncation_plan(base, k)))
    rows = measure_candidates(
        base,
        tok,
        task,
        dev,
        candidates,
        texts,
        model_name="minilm-l6",
        command=command,
        threads=args.threads,
        repeats=args.repeats,
        warmup=1 if args.quick else 5,
        batch_sizes=() if args.no_latency else (1, 32),
    )
    for r in rows:  # the trained plugins' seed; the teacher and the baselines draw nothing
        r["seed"] = args.seed if r["method"] == "plugin" else None
        if r["method"] in TRAINING_FREE:
            r["extras"]["seed_note"] = SEED_FREE + f" ({TRAINING_FREE[r['method']]})"
    return rows


# Rows that train nothing: one teacher gives them one score whatever the seed.
TRAINING_FREE = {
    "teacher": "the task's teacher, scored as built",
    "mean-merging": "a training-free baseline on the teacher",
    "truncation": "a training-free baseline on the teacher",
}


def keep_timed(new: list[dict], earlier: list[dict]) -> list[dict]:
    """``new`` less the untimed rows that only repeat a timed earlier row: a ``--no-latency``
    (seed) run scores the teacher and the training-free baselines again, which draw nothing,
    so on the same teacher they reproduce the earlier score exactly; writing them would
    replace the timed row (seed None replaces every seed) with an untimed copy. A row whose
    score or reference differs (another teacher) is written: it is a new measurement."""

    def repeats(r: dict, e: dict) -> bool:
        return (
            (e["task"], e["method"], e["setting"]) == (r["task"], r["method"], r["setting"])
            and e.get("latency_ratio_b32") is not None
            and e.get("reference_score") is not None
            and r.get("reference_score") is not None
            and abs(e["score"] - r["score"]) < 1e-9
            and abs(e["reference_score"] - r["reference_score"]) < 1e-9
        )

    return [
        r
        for r in new
        if not (
            r["method"] in TRAINING_FREE
            and r.get("latency_ratio_b32") is None
            and any(repeats(r, e) for e in earlier)
        )
    ]


def plot_task(output: Path, rows: list[dict], task: str, teacher: dict | None) -> Path:
    """Draw ``plugins_<task>.png`` beside ``output`` from every row of the task in the file
    (not only one run's): a point per setting (``plot_points``), ``teacher``'s rows first."""
    return plot_tradeoff(
        plot_points([r for r in rows if r["task"] == task], teacher["score"] if teacher else None),
        output.parent / f"plugins_{task}.png",
        x="flops_128",
        title=f"Plugins on {task} (MiniLM-L6): score vs FLOPs at length 128 (mean over seeds)",
    )


PLUGIN_SETTING = re.compile(
    r"k(?P<k>\d+)-(?P<placement>ffn|layer)(?P<cls>-cls)?(?:-r(?P<bottleneck>\d+))?(?:\+kl)?"
)


def stand_in(row: dict, base):
    """``row``'s candidate rebuilt on ``base`` (pre-trained MiniLM-L6 with the task's head)
    for the shared timing protocol (benchmarks/retime.py --stand-in): the training-free
    baselines exactly as measured (``candidate_from_row``), a trained plugin as an untrained
    one of the same config (k, placement, first token kept out, restorer width: the setting
    names them; ``+kl`` trains differently, same shapes), attached to the model so its
    parameters count. Returns ``(model, plan)``; None for a setting it cannot parse."""
    import copy

    import torch

    model = copy.deepcopy(base)
    if row["method"] in ("teacher", "mean-merging", "truncation"):
        return model, candidate_from_row(row, model).plan
    found = PLUGIN_SETTING.fullmatch(row["setting"]) if row["method"] == "plugin" else None
    if not found:
        return None
    kw = dict(k=int(found["k"]), placement=found["placement"], keep_first_token=bool(found["cls"]))
    if found["bottleneck"]:
        kw["bottleneck"] = int(found["bottleneck"])
    torch.manual_seed(0)
    plugin = Plugin(PluginConfig(**kw), model)
    model.add_module("stand_in_plugin", plugin)  # counted with the model, not run by it
    return model.eval(), plugin.plan()


# The restorer change of 2026-11-22 (edab1aa, 10:48 UTC) runs the adapter on a kept first
# token and overwrites its row instead of concatenating it back: the same outputs, 4*d*r more
# FLOPs per covered layer and example. Rows counted before it carry the older count.
RESTORER_IN_PLACE = "2026-11-22T10:48:06+00:00"


def flops_recount(row: dict, base, flops_128: float) -> str | None:
    """Why ``row``'s recorded FLOPs at 128 differ from its stand-in's ``flops_128``, where the
    difference is exactly a known change of the count (then the shared protocol re-counts the
    row, keeping the old value in ``extras.flops_recount``); None where it is not."""
    found = (
        PLUGIN_SETTING.fullmatch(row.get("setting", "")) if row.get("method") == "plugin" else None
    )
    if not found or not found["cls"] or row.get("date", "") >= RESTORER_IN_PLACE:
        return None
    r = int(found["bottleneck"] or PluginConfig.bottleneck)
    config = PluginConfig(k=int(found["k"]), placement=found["placement"], keep_first_token=True)
    covered = len(config.layer_indices(base.config.num_layers))
    delta = 4 * base.config.hidden_size * r * covered
    if abs(flops_128 - row["flops_128"] - delta) > 0.5:
        return None
    return (
        f"counted before {RESTORER_IN_PLACE[:16]}Z (edab1aa): since then the restorer runs its "
        f"adapter on the kept first token and overwrites that row (same outputs), "
        f"4*d*r = {delta // covered} FLOPs more per covered layer and example ({covered} layers)"
    )


def retime_task(task_name: str, teacher: str, args: argparse.Namespace, command: str) -> list[dict]:
    """Re-measure the latency ratios and FLOPs of a task's rows (see :func:`retime_rows`)."""
    task = get_task(task_name)
    rows = [r for r in earlier_rows(Path(args.output)) if r["task"] == task.name]
    base, tok = model_for_task(teacher, task)
    base.eval()
    print(f"[plugins] {task.name}: re-timing {len(rows)} rows", flush=True)
    return retime_rows(
        base,
        tok,
        rows,
        dev_texts(task, args.profile_limit),
        command=command,
        threads=args.threads,
        repeats=args.repeats,
    )


def earlier_rows(output: Path) -> list[dict]:
    """The rows already in the results file (none if it does not exist)."""
    return ResultsSink(output, "plugins").rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument(
        "--teacher",
        help="use this model folder as the teacher (one task only); "
        "'minilm-l6' = the pre-trained model with an untrained head (smoke runs)",
    )
    parser.add_argument("--ks", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument(
        "--placements", nargs="+", default=["ffn", "layer"], choices=["ffn", "layer"]
    )
    parser.add_argument("--steps", type=int, default=500, help="stage-C optimizer steps per plugin")
    parser.add_argument(
        "--max-epochs",
        type=float,
        default=3.0,
        help="cap --steps at this many passes over the task's training set (0: no cap)",
    )
    parser.add_argument(
        "--stage-a-steps",
        type=int,
        default=1000,
        help="stage-A steps (WikiText-2 + the task's sentences, against the pre-trained "
        "model) for the plugins that have stage A: the '+A' variant, or all with --stage-a-all",
    )
    parser.add_argument(
        "--stage-a-all",
        action="store_true",
        help="every plugin gets stage A before stage C (rows named '+A')",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--train-limit", type=int, help="training examples (default: steps * batch size)"
    )
    parser.add_argument(
        "--dev-limit", type=int, help="score on the first N dev examples (default: all)"
    )
    parser.add_argument(
        "--profile-limit", type=int, default=256, help="dev inputs for FLOPs and latency"
    )
    parser.add_argument("--repeats", type=int, default=30, help="timed latency rounds")
    parser.add_argument(
        "--threads", type=int, help="torch threads for everything (default 2; 1 with --quick)"
    )
    parser.add_argument(
        "--variants",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the k=4 variants (-cls, +kl, -r64, +A); default: on, off with --quick",
    )
    parser.add_argument(
        "--variant-kinds",
        nargs="+",
        choices=VARIANT_KINDS,
        default=list(VARIANT_KINDS),
        help="which k=4 variants --variants trains (default: all)",
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        help="train only the plugins of these row names, e.g. k4-ffn-cls (the baselines are "
        "always scored): one arm's seed run without re-training the others",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets everywhere")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip tasks whose plugins are all in the results file (training always resumes)",
    )
    parser.add_argument(
        "--retime",
        action="store_true",
        help="only re-measure the costs of the rows already in the results file: latency "
        "ratios and FLOPs (trained plugins reload; scores stay): for a quiet machine",
    )
    parser.add_argument(
        "--plot",
        action="store_true",
        help="only redraw the tasks' plots from the rows in the results file",
    )
    parser.add_argument("--runs", default="runs/plugins", help="where trained plugins go")
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="training seed, recorded in each row; rows of other seeds stay beside these",
    )
    parser.add_argument(
        "--no-latency",
        action="store_true",
        help="score and count FLOPs only (rows get no latency): for seed re-runs on a busy "
        "machine; time later with --retime on a quiet one",
    )
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.quick:  # a smoke run of every code path, not a measurement
        args.steps = min(args.steps, 10)
        args.batch_size = min(args.batch_size, 16)
        args.dev_limit = args.dev_limit or 100
        args.profile_limit = min(args.profile_limit, 16)
        args.repeats = min(args.repeats, 3)
        args.stage_a_steps = min(args.stage_a_steps, 5)
        args.threads = args.threads or 1
    args.threads = args.threads or 2
    if args.variants is None:
        args.variants = not args.quick
    try:  # a --settings name that the other options do not make fails before any work
        specs_of(args)
    except ValueError as err:
        parser.error(str(err))
    if args.teacher and len(args.tasks) != 1:
        parser.error("--teacher names one teacher: give exactly one --tasks entry")
    command = command_line(__file__, argv)

    output = Path(args.output)
    if args.plot:
        rows = earlier_rows(output)
        for name in args.tasks:
            task = get_task(name).name
            teacher = next(
                (r for r in rows if r["task"] == task and r["method"] == "teacher"), None
            )
            if any(r["task"] == task for r in rows):
                print(f"[plugins] {plot_task(output, rows, task, teacher)}", flush=True)
        return 0
    if args.retime:
        for name in args.tasks:
            teacher = find_teacher(get_task(name).name, args.teacher)
            if teacher is None:
                return 1
            with fixed_threads(args.threads):
                rows = retime_task(name, teacher, args, command)
            ResultsSink(output, "plugins").add(rows)
            print(markdown_table(rows, COLUMNS), flush=True)
        return 0
    done = []
    for name in args.tasks:
        if args.resume:
            specs = specs_of(args)
            want = {spec.name for spec in specs}
            have = {
                r["setting"]
                for r in earlier_rows(output)
                if r["task"] == get_task(name).name and r.get("seed") in (None, args.seed)
            }
            if want <= have:
                print(f"[plugins] {name}: every plugin already measured (--resume)", flush=True)
                continue
        teacher = find_teacher(get_task(name).name, args.teacher)
        if teacher is None:
            continue
        with fixed_threads(args.threads):
            task_rows = run_task(name, teacher, args, command)
        if args.teacher == "minilm-l6":
            for r in task_rows:
                r["extras"]["note"] = (
                    "smoke run: teacher = pre-trained MiniLM-L6 with an untrained head"
                )
        done.append(name)
        # A fresh sink re-reads the file just before writing (another run, on other tasks,
        # may have written meanwhile); this run's rows replace those of the same settings and
        # the task's other rows (variants not trained this time) stay.
        sink = ResultsSink(output, "plugins")
        sink.add(keep_timed(task_rows, sink.rows) if args.no_latency else task_rows)
        teacher_row = next((r for r in task_rows if r["method"] == "teacher"), None)
        plot_task(output, sink.rows, get_task(name).name, teacher_row)
        print(markdown_table(task_rows, COLUMNS), flush=True)
    if not done:
        print("[plugins] no task had a finished teacher: nothing measured", flush=True)
        return 1
    print(f"[plugins] rows written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
