"""Offline compression: SVD family vs the autoencoder framework, per layer and grouped.

    python benchmarks/factorize.py                        # every task with a finished teacher
    python benchmarks/factorize.py --tasks mrpc --quick   # smoke run (a few minutes)
    python benchmarks/factorize.py --teacher DIR --tasks rte
    python benchmarks/factorize.py --with-finetune --tasks mrpc --ratios 4

For each task whose MiniLM-L6 teacher has finished training, each ratio (2, 4, 10 of the
compressed modules' stored parameters), each method (svd, fwsvd, svdllm, ae, ae-act),
per layer and grouped (one module type across all layers), it measures:

- score with no fine-tuning (compress the fine-tuned teacher, evaluate on dev);
- fidelity: mean cosine of the final hidden states to the teacher's, real dev tokens;
- stored parameters (the whole model, and the compressed modules' ratio achieved), FLOPs
  per example (dev sentences at batch 1, and at length 128), CPU latency ratio against the
  teacher at batch 1 and 32 (interleaved in the same run), compression wall time.

``--with-finetune`` adds the paper's protocol: compress the *pre-trained* minilm-l6 (raw-text
calibration; fwsvd's Fisher row weights come from the fine-tuned teacher's task gradients,
the pre-trained model having no task head), then fine-tune the compressed form on
``--finetune-examples`` training examples (default 2000) for ``--finetune-epochs`` (3),
beside the uncompressed pre-trained model fine-tuned the same way (``uncompressed+finetune``,
the reference). It is expensive: about 6 minutes per row on one core for MRPC.

Teachers are never trained here: a task whose teacher is not finished is skipped (train it
with benchmarks/teachers.py). Rows go to benchmarks/results/factorize.json (rows of tasks
not measured in this run are kept), plots to benchmarks/results/factorize_<task>.png.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from report import AE_STEPS, ae_steps_of, command_line, same_teacher
from report import COLUMNS as REPORT_COLUMNS  # noqa: E402  (benchmarks/ is on sys.path)

from gearshift.atomic import write_json_atomic
from gearshift.data import get_task
from gearshift.jobs import (
    TaskData,
    dev_texts,
    evaluate,
    task_of_folder,
    teacher_dir,
    training_finished,
)
from gearshift.measure import (
    OperatingPoint,
    ResultsSink,
    compare_latency,
    count_parameters,
    fixed_threads,
    flops_at_length,
    flops_per_example,
    forward_fn,
    make_batch,
    markdown_table,
    plot_points,
    plot_tradeoff,
)
from gearshift.methods.factorize import (
    FactorizeConfig,
    calibrate,
    calibration_batches,
    compress,
    densify,
    load_factorized,
)
from gearshift.methods.factorize.model import compressed_modules
from gearshift.paths import cache_dir
from gearshift.runtime import load_pretrained, load_tokenizer
from gearshift.runtime.io import _init_head

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "factorize.json"
GLUE5 = ["sst2", "mrpc", "rte", "stsb", "cola"]
METHODS = ["svd", "fwsvd", "svdllm", "ae", "ae-act"]
MODEL = "minilm-l6"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", nargs="+", default=GLUE5)
    p.add_argument("--teacher", help="use this fine-tuned model folder as the teacher (one task)")
    p.add_argument("--ratios", type=float, nargs="+", default=[2.0, 4.0, 10.0])
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument(
        "--modes", nargs="+", default=["per-layer", "grouped"], choices=["per-layer", "grouped"]
    )
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"a seed study of the no-fine-tuning rows (other than {DEFAULT_SEED}): the "
        "calibration sample and the autoencoders' init are drawn with this seed, scores only "
        "(no latency: the shapes, and so the time, are the default seed's), rows kept beside "
        f"the seed-{DEFAULT_SEED} ones; plain svd uses no draw and is skipped",
    )
    p.add_argument("--calibration", choices=["task", "text"], default="task")
    p.add_argument("--calibration-examples", type=int, default=256)
    p.add_argument(
        "--ae-steps",
        type=int,
        default=None,
        help=f"autoencoder steps per matrix or group (default {AE_STEPS}, the library's; "
        "40 with --quick)",
    )
    p.add_argument(
        "--ae-refine-steps",
        type=int,
        default=None,
        help="ae-act: steps optimising the codes directly (default: as many as --ae-steps)",
    )
    p.add_argument("--dev-limit", type=int, default=None, help="score on the first N dev examples")
    p.add_argument(
        "--measure-texts", type=int, default=256, help="dev texts for FLOPs and fidelity"
    )
    p.add_argument("--latency-repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=2, help="threads for timing latency")
    p.add_argument(
        "--work-threads",
        type=int,
        default=1,
        help="threads for compression, evaluation and FLOP counting (1: on a shared "
        "2-core machine, BLAS threads fighting over cores made LAPACK many times slower)",
    )
    p.add_argument("--with-finetune", action="store_true", help="also run the paper's protocol")
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip settings already recorded in the results file (rows are written one by one) "
        "the same way: autoencoders at the same steps, no-fine-tuning rows on the same teacher; "
        "a fine-tuning run that was cut off continues from its last checkpoint",
    )
    p.add_argument(
        "--finetune-examples", type=int, default=2000, help="training examples per fine-tuning run"
    )
    p.add_argument(
        "--finetune-epochs",
        type=float,
        default=3.0,
        help="epochs over the --finetune-examples (3: with 1, the uncompressed reference "
        "fine-tuned on MRPC stayed at the all-paraphrase F1; docs/factorize.md)",
    )
    p.add_argument(
        "--finetune-form",
        choices=["compressed", "dense"],
        default="compressed",
        help="compressed (the paper's protocol): fine-tune the factors, or the codes, norms and "
        "decoders; dense (a diagnosis, rows `+finetune-dense`): rebuild the compressed "
        "pre-trained model's weights as plain matrices and fine-tune those, which tells a "
        "compressed form that cannot learn from a start that has lost the pre-training",
    )
    p.add_argument(
        "--finetune-compressed-lr",
        type=float,
        default=None,
        help="a diagnosis (rows `+finetune-lr<LR>`): the compressed form's parameters "
        "(factors; codes, norms, decoders) fine-tuned at this learning rate, the rest at the "
        "protocol's 1e-4",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: ratio 2, 32 calibration examples, 40 AE steps, 100 dev examples, "
        "8 texts for FLOPs and fidelity, 3 latency repeats; fine-tuning at most 200 "
        "examples for 1 epoch",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results file (default {RESULTS.relative_to(HERE.parent)}; with --quick "
        "runs/factorize-quick/factorize.json, so smoke rows never mix with real ones)",
    )
    args = p.parse_args(argv)
    if args.seed != DEFAULT_SEED and args.with_finetune:
        p.error(
            f"--seed {args.seed} is a seed study of the no-fine-tuning rows; the fine-tuning "
            f"protocol runs with seed {DEFAULT_SEED} only (drop --with-finetune)"
        )
    if args.quick:
        args.ratios = [2.0]
        args.calibration_examples = min(args.calibration_examples, 32)
        args.ae_steps = args.ae_steps or 40
        args.dev_limit = args.dev_limit or 100
        args.measure_texts = min(args.measure_texts, 8)
        args.latency_repeats = min(args.latency_repeats, 3)
        args.finetune_examples = min(args.finetune_examples, 200)
        args.finetune_epochs = min(args.finetune_epochs, 1.0)
    args.ae_steps = args.ae_steps or AE_STEPS
    if args.out is None:
        args.out = (
            HERE.parent / "runs" / "factorize-quick" / "factorize.json" if args.quick else RESULTS
        )
    if args.finetune_form == "dense" and args.finetune_compressed_lr is not None:
        p.error(
            "--finetune-compressed-lr sets the compressed form's learning rate, and "
            "--finetune-form dense leaves no compressed form: pass one of them"
        )
    if args.teacher and len(args.tasks) != 1:
        task = task_of_folder(args.teacher)
        if task is None:
            p.error("--teacher needs exactly one task in --tasks (the folder records none)")
        args.tasks = [task]
    return args


def row_method(method: str, mode: str, finetune: bool = False, variant: str = "") -> str:
    """``ae-grouped``; ``+finetune`` after the paper's protocol; ``+finetune-<variant>`` after
    a diagnosis that changed it (see :func:`finetune_variant`)."""
    suffix = ("+finetune" + (f"-{variant}" if variant else "")) if finetune else ""
    return method + ("-grouped" if mode == "grouped" else "") + suffix


def finetune_variant(args: argparse.Namespace) -> tuple[str, str]:
    """How this run's fine-tuning departs from the paper's protocol, if it does: the rows'
    method suffix ("" for the protocol, ``dense``, ``lr0.001``) and the setting's words."""
    if args.finetune_form == "dense":
        return "dense", ", rebuild dense,"
    if args.finetune_compressed_lr is not None:
        lr = f"{args.finetune_compressed_lr:g}"
        return f"lr{lr}", f", compressed parameters at lr {lr},"
    return "", ""


def teacher_folder(task: str, args: argparse.Namespace) -> Path | None:
    """The finished teacher of ``task`` (or --teacher), or None with a message."""
    if args.teacher:
        return Path(args.teacher)
    root = teacher_dir(task, MODEL)
    if not training_finished(root) or not (root / "best" / "gearshift.json").is_file():
        print(
            f"[factorize] skipping {task}: its teacher at {root} has not finished training "
            "(run benchmarks/teachers.py first)",
            flush=True,
        )
        return None
    return root / "best"


class Measure:
    """Everything measured against one teacher, on the same dev data, in the same run."""

    def __init__(self, teacher, tokenizer, task, args: argparse.Namespace) -> None:
        self.teacher, self.tokenizer, self.task, self.args = teacher, tokenizer, task, args
        self.dev = TaskData.load(task, tokenizer, "dev", args.dev_limit)
        texts = dev_texts(task, limit=args.measure_texts)
        self.singles = [make_batch(tokenizer, [t], 1) for t in texts]
        self.fidelity_batches = list(
            TaskData.load(task, tokenizer, "dev", args.measure_texts).loader(32)
        )
        self.latency_batches = {size: make_batch(tokenizer, texts, size) for size in (1, 32)}
        self.reference_hidden = self.hidden(teacher)
        self.teacher_score = evaluate(teacher, self.dev)[task.main_metric]
        self.cost_cache: dict[tuple, dict[str, Any]] = {}
        self.cost_labels: dict[tuple, str] = {}
        self.cost_source = ""

    @torch.inference_mode()
    def hidden(self, model) -> torch.Tensor:
        out = []
        for b in self.fidelity_batches:
            inputs = {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in b}
            h = model(**inputs).last_hidden_state
            out.append(h[b["attention_mask"].bool()])
        return torch.cat(out)

    def fidelity(self, model, reference: torch.Tensor | None = None) -> float:
        """Mean cosine of ``model``'s final hidden states to ``reference``'s (default: the
        teacher's) on the dev texts."""
        ref = self.reference_hidden if reference is None else reference
        return float(torch.nn.functional.cosine_similarity(self.hidden(model), ref, dim=-1).mean())

    def costs(self, model, latency: bool = True, label: str = "") -> dict[str, Any]:
        """FLOPs, parameters and latency ratios of ``model``. Models with the same modules and
        parameter shapes do the same arithmetic on the same inputs (every SVD-family method at
        one ratio and mode gives the same ranks), so their FLOPs and latency are measured
        once per task and reused; ``measured_with`` names the row they were measured on."""
        key = signature(model)
        if key in self.cost_cache:
            self.cost_source = self.cost_labels[key]
            return dict(self.cost_cache[key])
        self.cost_source = label
        ratios = {1: 1.0, 32: 1.0}  # the teacher against itself: 1 by definition
        for size, batch in self.latency_batches.items() if latency else ():
            cmp = compare_latency(
                {"teacher": forward_fn(self.teacher), "candidate": forward_fn(model)},
                batch,
                warmup=1 if self.args.quick else 3,
                repeats=self.args.latency_repeats,
                threads=self.args.threads,
            )
            ratios[size] = cmp.ratios["candidate"]
        costs = {
            "flops_dynamic": flops_per_example(model, self.singles),
            "flops_128": flops_at_length(model, 128),
            "params": count_parameters(model),
            "latency_ratio_b1": ratios[1],
            "latency_ratio_b32": ratios[32],
        }
        if latency:
            self.cost_cache[key], self.cost_labels[key] = costs, label
        return dict(costs)


def signature(model: torch.nn.Module) -> tuple:
    """The model's arithmetic: every module's type and every parameter's and buffer's shape."""
    return tuple(
        (
            name,
            type(m).__name__,
            tuple((n, tuple(t.shape)) for n, t in m.named_parameters(recurse=False)),
            tuple((n, tuple(t.shape)) for n, t in m.named_buffers(recurse=False)),
        )
        for name, m in model.named_modules()
    )


DEFAULT_SEED = 42  # every row before the seed study: calibration sample and AE init draw 0


def draw_seed(args: argparse.Namespace) -> int:
    """The seed the calibration sample and the autoencoders' init are drawn with: 0 for the
    default ``--seed`` (every row before the seed study drew with 0), else ``--seed``."""
    seed = getattr(args, "seed", DEFAULT_SEED)
    return 0 if seed == DEFAULT_SEED else seed


def factorize_config(
    method: str, ratio: float, grouped: bool, args: argparse.Namespace
) -> FactorizeConfig:
    """The method's config: the library defaults (the paper's AE for ``ae``); ``ae-act``, our
    extension, also optimises its codes directly afterwards (``ae_refine_steps``). The
    autoencoders' init is drawn with :func:`draw_seed`."""
    kw: dict[str, Any] = dict(
        method=method, ratio=ratio, grouped=grouped, progress=False, seed=draw_seed(args)
    )
    if args.ae_steps:
        kw["ae_steps"] = args.ae_steps
    if method == "ae-act":
        steps = kw.get("ae_steps", FactorizeConfig.ae_steps)
        kw["ae_refine_steps"] = steps if args.ae_refine_steps is None else args.ae_refine_steps
    return FactorizeConfig(**kw)


def stand_in(row: dict, base: torch.nn.Module):
    """A model with ``row``'s arithmetic built from ``base`` (the pre-trained model with the
    task's head), for the shared timing protocol (benchmarks/retime.py --stand-in): rows
    record no artifact, and their time depends on shapes, not weights (:meth:`Measure.costs`
    reuses one timing across a signature for the same reason). Every SVD-family method at one
    ratio and mode gives the same ranks, so plain ``svd`` (no calibration) stands in for
    fwsvd and svdllm; ``ae-act`` is ``ae``'s form with refined codes, so ``ae`` with one
    training step stands in for both. Returns ``(model, None)`` (no step plan); the caller
    checks the stand-in's parameters and FLOPs against the row's."""
    extras = row.get("extras", {})
    if row["method"] == "teacher" or row["method"].startswith("uncompressed"):
        return copy.deepcopy(base), None
    if extras.get("finetune_form") == "dense":  # fine-tuned as the rebuilt dense model
        return copy.deepcopy(base), None
    method = extras["factorize_method"]
    kw: dict[str, Any] = dict(
        method="svd" if method in ("svd", "fwsvd", "svdllm") else "ae",
        ratio=float(extras["target_ratio"]),
        grouped=extras.get("mode") == "grouped",
        progress=False,
    )
    if kw["method"] == "ae":
        kw["ae_steps"] = 1
    model = copy.deepcopy(base)
    if extras.get("protocol") == "finetune":  # the pre-trained model was compressed headless
        head = model.config.head
        kind, labels, names = head.kind, head.num_labels, head.label_names
        model.set_head(None, 0)
        model, _ = compress(model, FactorizeConfig(**kw))
        model.set_head(kind, labels, names)
        _init_head(model)
        return model.eval(), None
    model, _ = compress(model, FactorizeConfig(**kw))
    return model.eval(), None


def on_teacher(row: dict, teacher_score: float) -> bool:
    """Whether a no-fine-tuning row compressed the teacher that now scores ``teacher_score``.
    A teacher rebuilt with another recipe or seed scores differently, and its rows are
    measured again. A rebuild with the same seeded recipe at another thread count differs
    only in the weights' last bits and scores within report.TEACHER_TOLERANCE (STS-B: 86.1929,
    86.1920 and 86.1921; its compressed rows then agreed within 0.04), so it counts as the same."""
    ref = row.get("reference_score")
    return ref is None or same_teacher(ref, teacher_score)


def recorded(
    sink: ResultsSink,
    task: str,
    method: str,
    mode: str,
    setting: str,
    config: FactorizeConfig,
    finetune: bool = False,
    teacher_score: float | None = None,
    variant: str = "",
    seed: int = DEFAULT_SEED,
) -> bool:
    """Whether ``sink`` holds this setting's row of ``seed``, measured the way ``config``
    would measure it now (autoencoders: the same step counts; no fine-tuning: the same
    teacher, known by ``teacher_score``)."""
    key = (task, row_method(method, mode, finetune, variant), setting)
    for row in sink.rows:
        if ResultsSink.key(row) == key and (row.get("seed") or DEFAULT_SEED) == seed:
            if not finetune and teacher_score is not None and not on_teacher(row, teacher_score):
                return False
            return not method.startswith("ae") or ae_steps_of(row) == (
                config.ae_steps,
                config.ae_refine_steps,
            )
    return False


def row_for(
    task,
    measure: Measure,
    method: str,
    mode: str,
    setting: str,
    score: float,
    costs: dict,
    report,
    fidelity: float | None,
    command: str,
    extra: dict | None = None,
    costs_from: str = "",
    *,
    config: FactorizeConfig,
) -> dict:
    units = report.units
    sizes = sorted({u.get("rank", u.get("code_size")) for u in units})
    ae = (
        {"ae_steps": config.ae_steps, "ae_refine_steps": config.ae_refine_steps}
        if method.startswith("ae")
        else {}
    )
    return OperatingPoint(
        task=task.name,
        model=MODEL,
        method=row_method(method, mode, bool(extra), (extra or {}).get("finetune_form", "")),
        setting=setting,
        metric=task.main_metric,
        score=score,
        reference_score=measure.teacher_score,
        command=command,
        **costs,
        extras={
            "protocol": "finetune" if extra else "no-finetune",
            "mode": mode,
            "factorize_method": method,
            "target_ratio": report.target_ratio,
            "stored_ratio": report.achieved_ratio,
            "compressed_weights": report.original_weights,
            "stored_weights": report.stored,
            "params_before": report.params_before,
            "fidelity_cos": fidelity,
            "compression_seconds": report.seconds,
            "calibration_seconds": report.calibration_seconds,
            "ranks_or_code_sizes": sizes,
            "notes": report.notes,
            "costs_measured_on": costs_from,  # FLOPs/latency of an identically shaped model
            **ae,
            **(extra or {}),
        },
    ).to_dict()


def run_task(task_name: str, args: argparse.Namespace, command: str, sink: ResultsSink) -> bool:
    """Measure every setting of one task (``--resume``: those not recorded); False when the
    task has no finished teacher."""
    task = get_task(task_name)
    folder = teacher_folder(task.name, args)
    if folder is None:
        return False
    print(f"[factorize] {task.name}: teacher {folder}", flush=True)
    teacher = load_pretrained(str(folder)).eval()
    tokenizer = load_tokenizer(str(folder))
    measure = Measure(teacher, tokenizer, task, args)
    teacher_costs = measure.costs(teacher, latency=False)
    study = args.seed != DEFAULT_SEED
    if study:
        # a seed study adds rows beside the default seed's, measured against the same teacher
        # (the report merges seeds of one teacher only): the recorded teacher row stays
        known = [r for r in sink.rows if r["task"] == task.name and r["method"] == "teacher"]
        if known and not on_teacher(known[0], measure.teacher_score):
            print(
                f"[factorize] {task.name}: this teacher scores {measure.teacher_score:.2f}, "
                f"the recorded rows' {known[0]['score']:.2f}: the seed study's rows will not "
                "merge with theirs (rebuild the teacher from its recipe)",
                flush=True,
            )
    if not study:
        sink.add(
            OperatingPoint(
                task=task.name,
                model=MODEL,
                method="teacher",
                setting="full",
                metric=task.main_metric,
                score=measure.teacher_score,
                reference_score=measure.teacher_score,
                command=command,
                **teacher_costs,
                extras={"teacher_dir": str(folder), "fidelity_cos": 1.0},
            ).to_dict()
        )
    print(
        f"[factorize] {task.name}: teacher dev {task.main_metric} {measure.teacher_score:.2f}",
        flush=True,
    )
    cal = calibration_batches(
        tokenizer, args.calibration, task, args.calibration_examples, seed=draw_seed(args)
    )
    stats = None  # collected from the teacher once, on the first row that needs computing
    for ratio in args.ratios:
        for method in args.methods:
            if study and method == "svd":
                continue  # no calibration, no init: every seed gives the same model
            for mode in args.modes:
                setting = f"ratio {ratio:g}, {mode}, no fine-tuning"
                config = factorize_config(method, ratio, mode == "grouped", args)
                if args.resume and recorded(
                    sink,
                    task.name,
                    method,
                    mode,
                    setting,
                    config,
                    False,
                    measure.teacher_score,
                    seed=args.seed,
                ):
                    continue
                if stats is None:
                    stats = calibrate(teacher, config, cal, fisher=True)
                model = copy.deepcopy(teacher)
                try:
                    model, report = compress(model, config, stats=stats)
                except Exception as exc:  # one failed setting must not lose the others
                    print(
                        f"[factorize] {task.name} {method} {mode} ratio {ratio:g}: FAILED: {exc}",
                        flush=True,
                    )
                    continue
                score = evaluate(model, measure.dev)[task.main_metric]
                fid = measure.fidelity(model)
                costs = measure.costs(
                    model, latency=not study, label=f"{row_method(method, mode)}, {setting}"
                )
                if study:  # scores only: the time is the default seed's row's (same shapes)
                    costs.update(latency_ratio_b1=None, latency_ratio_b32=None)
                row = row_for(
                    task,
                    measure,
                    method,
                    mode,
                    setting,
                    score,
                    costs,
                    report,
                    fid,
                    command,
                    costs_from=measure.cost_source,
                    config=config,
                )
                row["seed"] = args.seed
                row["extras"]["calibration_seed"] = draw_seed(args)
                sink.add(row)
                print(
                    f"[factorize] {task.name} {method:6s} {mode:9s} ratio {ratio:g}: {task.main_metric} "
                    f"{score:.2f} (teacher {measure.teacher_score:.2f}), fidelity {fid:.3f}, stored ratio "
                    f"{report.achieved_ratio:.2f}, params {costs['params'] / 1e6:.2f}M, FLOPs "
                    f"{costs['flops_dynamic'] / 1e6:.0f}M (teacher {teacher_costs['flops_dynamic'] / 1e6:.0f}M), "
                    + (
                        "seed study, untimed, "
                        if study
                        else f"latency b1 {costs['latency_ratio_b1']:.2f} "
                        f"b32 {costs['latency_ratio_b32']:.2f}, "
                    )
                    + f"{report.seconds:.0f} s",
                    flush=True,
                )
                del model
    if args.with_finetune:
        run_finetune(task, measure, args, command, sink)
    return True


def pretrained_folder(
    config: FactorizeConfig, args: argparse.Namespace, fisher_task: str = ""
) -> Path:
    """The cache folder of the pre-trained model compressed by ``config`` (``fisher_task``:
    fwsvd's, with that task teacher's Fisher weights)."""
    name = (
        f"{config.method}-{'grouped' if config.grouped else 'per-layer'}-{config.ratio:g}"
        f"-cal{args.calibration_examples}-ae{config.ae_steps}-{config.ae_refine_steps}"
        + (f"-fisher-{fisher_task}" if fisher_task else "")
    )
    return cache_dir() / "factorize-pretrained" / name


def compressed_pretrained(
    config: FactorizeConfig, cal, args: argparse.Namespace, stats=None, task: str = ""
):
    """The pre-trained MiniLM-L6 compressed by ``config`` (raw-text calibration): the same
    for every task, so it is compressed once and cached (with its report) in the cache dir.
    ``stats`` (with ``task``): statistics collected elsewhere, fwsvd's Fisher weights from a
    task's teacher; that model is the task's own."""
    from gearshift.methods.factorize.compress import CompressionReport
    from gearshift.methods.factorize.model import save_factorized

    folder = pretrained_folder(config, args, task if stats is not None else "")
    if (folder / "gearshift.json").is_file():
        meta = json.loads((folder / "gearshift.json").read_text())
        return load_factorized(folder).train(), CompressionReport(**meta["report"])
    model = load_pretrained(MODEL, head_kind=None)
    model, report = compress(model, config, None if stats is not None else cal, stats=stats)
    save_factorized(model, folder, extra={"report": report.to_dict()})
    return model, report


def loss_curve(folder: Path) -> dict[str, float]:
    """Mean training loss over the first and the last sixth of a fine-tuning run's logged
    steps (the Trainer's ``log.jsonl``): whether the run learned at all. Empty without a log."""
    path = folder / "log.jsonl"
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in records if r.get("kind") == "train" and "loss" in r]
    if not losses:
        return {}
    k = max(1, len(losses) // 6)
    return {
        "train_loss_first": sum(losses[:k]) / k,
        "train_loss_last": sum(losses[-k:]) / k,
    }


def compressed_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The dense weight of every compressed module of ``model`` (rebuilt), by name."""
    with torch.no_grad():
        return {n: m.weight.detach().clone() for n, m in compressed_modules(model).items()}


def weight_change(before: dict[str, torch.Tensor], model: torch.nn.Module) -> float:
    """Mean over the modules in ``before`` of ``||W - W_before|| / ||W_before||``, ``W`` the
    weight ``model`` now has there (compressed or dense): how far fine-tuning moved them."""
    with torch.no_grad():
        changes = [
            float((model.get_submodule(n).weight - w).norm() / w.norm()) for n, w in before.items()
        ]
    return sum(changes) / len(changes)


class StartFidelity:
    """Cosine of a model's final hidden states to the uncompressed pre-trained model's on the
    dev texts: how much of the pre-training a compressed model keeps before it is fine-tuned."""

    def __init__(self, measure: Measure) -> None:
        self.measure = measure
        self.reference: torch.Tensor | None = None

    def __call__(self, model: torch.nn.Module) -> float:
        if self.reference is None:
            pretrained = load_pretrained(MODEL, head_kind=None).eval()
            self.reference = self.measure.hidden(pretrained)
        was_training = model.training
        model.eval()
        try:
            return self.measure.fidelity(model, self.reference)
        finally:
            model.train(was_training)


def run_finetune(
    task, measure: Measure, args: argparse.Namespace, command: str, sink: ResultsSink
) -> None:
    """The paper's protocol: compress pre-trained minilm-l6, then fine-tune the compressed form.
    The reference is the uncompressed pre-trained model fine-tuned the same way
    (``uncompressed+finetune``): the teacher had a full fine-tuning run, these a short one.

    Every fine-tuned row also records its start (``start_fidelity``, see :class:`StartFidelity`),
    its training loss at the start and the end (``train_loss_first`` / ``_last``) and how far
    its compressed weights moved (``weight_change``); with ``--resume``, recorded rows that
    lack them get them from the cached models, logs and checkpoints (:func:`backfill`), and a
    row whose fine-tuning was cut off continues from its last checkpoint (:func:`resume_step`;
    the row records ``finetune_resumed_at_step``).
    ``--finetune-form dense`` and ``--finetune-compressed-lr`` change the fine-tuning (a
    diagnosis, :func:`finetune_variant`); their rows are their own."""
    from gearshift.jobs import finetune
    from gearshift.methods.factorize.finetune import finetune_compressed
    from gearshift.train import TrainConfig

    tokenizer = load_tokenizer(MODEL)
    labels = list(task.label_names) if task.label_names else None
    epochs = f"{args.finetune_epochs:g} epoch" + ("" if args.finetune_epochs == 1 else "s")
    protocol = f"({args.finetune_examples} examples, {epochs})"
    variant, route = finetune_variant(args)
    dense = variant == "dense"
    start_fidelity = StartFidelity(measure)

    def with_task_head(model):
        torch.manual_seed(42)  # the fresh head's draw, the same for every method
        model.set_head(task.kind, task.num_labels, labels)
        _init_head(model)
        return model

    def run_dir(name: str) -> Path:
        return cache_dir() / "factorize-finetune" / task.name / name

    def tune(model, name: str, tune_fn, identity: dict[str, Any]):
        out = run_dir(name)
        identity = json.loads(json.dumps(identity))  # as run.json reads back
        step = resume_step(out, identity) if args.resume else None
        if step is None:  # nothing to continue, or another row's run: start clean
            shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / RUN_FILE, identity)
        train_cfg = TrainConfig(
            output_dir=str(out),
            epochs=args.finetune_epochs,
            batch_size=32,
            learning_rate=1e-4,
            warmup_ratio=0.06,
            seed=42,
            progress=False,
        )
        start = time.perf_counter()
        res = tune_fn(
            with_task_head(model),
            task_name=task.name,
            output_dir=out,
            train_config=train_cfg,
            train_limit=args.finetune_examples,
            dev_limit=args.dev_limit,
            tokenizer=tokenizer,
            resume=step is not None,
        )
        extra = {
            "finetune_seconds": time.perf_counter() - start,
            "finetune_examples": args.finetune_examples,
            **loss_curve(out),
        }
        if step is not None:  # finetune_seconds is then the continued part's only
            extra["finetune_resumed_at_step"] = step
        return res, extra

    reference = f"uncompressed pre-trained then fine-tune {protocol}"
    key = (task.name, "uncompressed+finetune", reference)
    recorded_ref = next((r for r in sink.rows if ResultsSink.key(r) == key), None)
    if not (args.resume and recorded_ref):
        res, extra = tune(
            load_pretrained(MODEL, head_kind=None), "uncompressed", finetune, {"setting": reference}
        )
        costs = measure.costs(load_pretrained(str(res.model_dir)).eval(), latency=False)
        sink.add(
            OperatingPoint(
                task=task.name,
                model=MODEL,
                method="uncompressed+finetune",
                setting=reference,
                metric=task.main_metric,
                score=res.score,
                reference_score=measure.teacher_score,
                command=command,
                **costs,  # the teacher's shape: latency ratio 1 by definition
                # its start is the pre-trained model itself: fidelity 1 by definition
                extras={"protocol": "finetune", **extra, "start_fidelity": 1.0},
            ).to_dict()
        )
        print(
            f"[factorize] {task.name} uncompressed + fine-tune: {task.main_metric} {res.score:.2f}",
            flush=True,
        )
    elif "start_fidelity" not in recorded_ref["extras"]:
        recorded_ref["extras"].update(loss_curve(run_dir("uncompressed")), start_fidelity=1.0)
        sink.add(recorded_ref)
    cal = calibration_batches(tokenizer, "text", None, args.calibration_examples)
    fisher = None  # fwsvd's row weights: the fine-tuned teacher's gradients on task examples
    for ratio in args.ratios:
        for method in args.methods:
            for mode in args.modes:
                name = f"{method}-{mode}-{ratio:g}" + (f"-{variant}" if variant else "")
                setting = f"ratio {ratio:g}, {mode}, compress pre-trained{route} then "
                setting += f"fine-tune {protocol}"
                config = factorize_config(method, ratio, mode == "grouped", args)
                if args.resume and recorded(
                    sink, task.name, method, mode, setting, config, True, variant=variant
                ):
                    backfill(
                        sink,
                        task.name,
                        row_method(method, mode, True, variant),
                        setting,
                        run_dir(name),
                        config,
                        args,
                        start_fidelity,
                    )
                    continue
                if method == "fwsvd":
                    if fisher is None:
                        task_cal = calibration_batches(
                            tokenizer, "task", task, args.calibration_examples
                        )
                        fisher = calibrate(measure.teacher, config, task_cal, fisher=True)
                    model, report = compressed_pretrained(config, None, args, fisher, task.name)
                else:
                    model, report = compressed_pretrained(config, cal, args)
                identity = {"setting": setting, "config": config.to_dict()}
                diagnosis = {"start_fidelity": start_fidelity(model)}
                before = compressed_weights(model)
                if dense:
                    res, extra = tune(densify(model), name, finetune, identity)
                    tuned = load_pretrained(str(res.model_dir))
                    # fine-tuned as plain matrices: the result stores every weight again
                    diagnosis |= {
                        "stored_ratio": 1.0,
                        "stored_weights": report.original_weights,
                    }
                else:
                    lr = args.finetune_compressed_lr
                    res, extra = tune(
                        model,
                        name,
                        functools.partial(finetune_compressed, compressed_lr=lr),
                        identity,
                    )
                    tuned = load_factorized(res.model_dir)
                diagnosis["weight_change"] = weight_change(before, tuned)
                if variant:
                    diagnosis["finetune_form"] = variant
                label = f"{row_method(method, mode, True, variant)}, {setting}"
                costs = measure.costs(tuned, label=label)
                sink.add(
                    row_for(
                        task,
                        measure,
                        method,
                        mode,
                        setting,
                        res.score,
                        costs,
                        report,
                        None,
                        command,
                        costs_from=measure.cost_source,
                        config=config,
                        extra=extra | diagnosis,
                    )
                )
                print(
                    f"[factorize] {task.name} {method} {mode} ratio {ratio:g} + fine-tune"
                    f"{f' ({variant})' if variant else ''}: {task.main_metric} {res.score:.2f}, start "
                    f"fidelity {diagnosis['start_fidelity']:.3f}, training loss "
                    f"{extra.get('train_loss_first', float('nan')):.3f} -> "
                    f"{extra.get('train_loss_last', float('nan')):.3f}, weight change "
                    f"{diagnosis['weight_change']:.3f}",
                    flush=True,
                )


RUN_FILE = "run.json"  # the row a fine-tuning folder trains: its setting and compression


def resume_step(folder: Path, identity: dict[str, Any]) -> int | None:
    """The step at which ``--resume`` continues the fine-tuning run in ``folder``, or None:
    the folder needs a complete checkpoint and a ``run.json`` naming this very row (its
    setting and compression config). A run of another row under the same folder name (say,
    other autoencoder steps) is not continued: its weights would pass for this row's."""
    from gearshift.train import checkpoint as ckpt

    run = folder / RUN_FILE
    if not run.is_file():
        return None
    try:
        same = json.loads(run.read_text()) == identity
    except json.JSONDecodeError:
        return None
    found = ckpt.find_checkpoint(folder) if same else None
    return None if found is None else int(ckpt.read_trainer_state(found)["global_step"])


def backfill(
    sink: ResultsSink,
    task: str,
    method: str,
    setting: str,
    folder: Path,
    config: FactorizeConfig,
    args: argparse.Namespace,
    start_fidelity: StartFidelity,
) -> None:
    """Give a fine-tuned row recorded before rows had them its start fidelity, loss curve and
    weight change, from the cached compressed pre-trained model, the run's log and its best
    checkpoint (skipped when one is gone: they are not recomputed)."""
    row = next(r for r in sink.rows if ResultsSink.key(r) == (task, method, setting))
    if "weight_change" in row["extras"]:
        return
    fisher_task = task if config.method == "fwsvd" else ""
    cached = pretrained_folder(config, args, fisher_task)
    curve = loss_curve(folder)
    best = folder / "best"
    if not curve or not (cached / "gearshift.json").is_file() or not best.is_dir():
        return
    start = load_factorized(cached)
    tuned = load_pretrained(str(best))  # dispatches on the folder kind (dense variant too)
    row["extras"].update(
        curve,
        start_fidelity=start_fidelity(start),
        weight_change=weight_change(compressed_weights(start), tuned),
    )
    sink.add(row)


def plot_task(rows: list[dict], task: str, folder: Path) -> list[Path]:
    """The task's plots of score against stored parameters, one point per setting (a seed
    study's calibration samples averaged: ``plot_points``), the teacher in each:
    ``factorize_<task>.png`` for the rows with no fine-tuning and
    ``factorize_<task>_finetuned.png`` for the fine-tuned ones (``+finetune`` methods and
    the uncompressed model fine-tuned alike). One plot of both had some 25 series, more
    than a legend and a palette can keep apart."""
    mine = [r for r in rows if r["task"] == task]
    teacher = [r for r in mine if r["method"] == "teacher"]
    tuned = [r for r in mine if "+finetune" in r["method"]]
    written = []
    for name, part, title in (
        (f"factorize_{task}.png", [r for r in mine if r not in tuned], "no fine-tuning"),
        (f"factorize_{task}_finetuned.png", teacher + tuned, "compressed, then fine-tuned"),
    ):
        if len(part) > len(teacher):
            plot_tradeoff(
                plot_points(part),
                folder / name,
                x="params",
                y="score",
                title=f"{task}: score vs stored parameters ({title})",
            )
            written.append(folder / name)
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = command_line(__file__, argv)
    sink = ResultsSink(args.out, "factorize")
    with fixed_threads(args.work_threads):
        found = [run_task(task, args, command, sink) for task in args.tasks]
    if not any(found):
        print("[factorize] nothing measured: no task has a finished teacher (or pass --teacher)")
        return 1
    rows = [r for r in sink.new if r["method"] != "teacher"]
    if not rows:
        print(f"[factorize] --resume found every setting recorded in {args.out}")
        return 0
    for task in sorted({r["task"] for r in rows}):
        plot_task(sink.rows, task, args.out.parent)
    print(markdown_table(rows, REPORT_COLUMNS["factorize"]))
    print(f"[factorize] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
