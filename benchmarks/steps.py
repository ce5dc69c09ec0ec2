"""Step-size acceleration of parameter-shared models: encoders (MiniLM-L6) and decoders.

    python benchmarks/steps.py encoders                  # shared MiniLM variants on 5 GLUE tasks
    python benchmarks/steps.py decoders                  # small GPT-2-style models, WikiText-2
    python benchmarks/steps.py encoders --quick --tasks rte   # smoke run (minutes)

Encoders. From pre-trained MiniLM-L6 (unshared), for each sharing (``--groups``: 1 = fully
shared, 2 = two groups of three layers) and each training mode (``naive``: distil and
fine-tune at step 1 only; ``step-aware``: every batch at a step size drawn from
``--step-sizes``), make the shared model (mean init), distil it on raw text (WikiText-2 valid,
hidden-state MSE at every layer a step lands on, ``--distil-steps`` steps; the same model
serves every task) and fine-tune it on each task (the same mode). Each fine-tuned
model is scored at N = 6, 4, 3, 2 Euler steps (and Heun at N = 3, 2), against the unshared
teacher (benchmarks/teachers.py) and the teacher with layers dropped to the same depth (its
first N layers; and Euler through every (6/N)-th layer). Per row: dev score, FLOPs per
example (dev inputs; and at length 128), block evaluations, CPU latency ratio to the same
model at N = 6 and to the teacher, batch 1 and 32, measured interleaved in one run. With
``--train-limit`` below a task's training-set size the unshared pre-trained model is also
fine-tuned on the same examples
with the same recipe (``unshared-finetuned``): the fair reference for the shared models,
since the teacher saw the whole training split. The pre-trained model cut to its first N
layers (``--cut-references``, default N = 3, i.e. a = 2) and fine-tuned with the same recipe
and data (``unshared-cut-finetuned``) is what a user might do instead of sharing: the
honest comparison for "dropping half the layers". ``--scratch-reference`` adds the same
architecture from a random initialisation fine-tuned the same way (``scratch-finetuned``):
what fine-tuning alone reaches, so the shared models' gain over it is what they kept from
pre-training. ``--groups`` with no value measures only the teacher and the references.

Decoders. A small GPT-2-style model (pre-LN, 6 x 256, an 8k byte-level BPE)
trained from scratch on WikiText-2 valid (the data folder has no train split): unshared,
fully shared and two groups, naive and step-aware; WikiText-2 test perplexity at N = 6, 4,
3, 2 (Euler; Heun at 3, 2), the unshared model with layers dropped, and greedy generation
tokens/s with the key/value cache at each N.

Initialisation (``init``). The shared block from its layers' mean or from one of them
(first, middle, last): cosine of the final hidden states to the unshared model's on
WikiText-2 test text at N = 6 and 3, right after sharing and after a short distillation
(with the encoders' LayerNorm choice).

Fidelity (``fidelity``). How good a copy of MiniLM-L6 each distilled shared model already in
``runs/steps/`` is (nothing is trained): cosine and MSE of its final hidden states to the
teacher's on real tokens, at N = 6, 4, 3, 2, on WikiText-2 test text and on each task's dev
inputs, beside two floors: the teacher's mean state given to every token, and the shared
model as initialised (its layers' mean, no distillation). ``explained_variance`` is
1 - MSE / (the mean state's MSE).

Layer latency (``latency``). The issue's latency target on its own, for a quiet machine
(nothing is trained; time does not depend on the weights): each sharing in ``--groups``, made
from MiniLM-L6 (mean init), at N = each of ``--n-steps`` Euler steps and at N = 0 (embeddings
and final norm only), timed interleaved at batch 1 and 32 on the first task's dev texts.
The layers' latency at N steps is T(N) - T(0); rows give it and the whole model's as ratios
to N = 6.

Every stage trains into ``runs/steps/`` and resumes there; rows go to
``benchmarks/results/steps.json`` (written after every model, rows of settings not run
this time are kept), plots to ``benchmarks/results/steps_<task>.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from report import COLUMNS as REPORT_COLUMNS  # noqa: E402  (benchmarks/ is on sys.path)
from report import command_line

from gearshift.constants import CONFIG_NAME
from gearshift.data import compute_metrics, get_task, load_examples
from gearshift.jobs import (
    TEACHER_RECIPES,
    TaskData,
    dev_texts,
    predict,
    teacher_dir,
    training_finished,
)
from gearshift.measure import (
    OperatingPoint,
    ResultsSink,
    compare_latency,
    count_parameters,
    encode_labels,
    fixed_threads,
    flops_at_length,
    flops_per_example,
    forward_fn,
    make_batch,
    markdown_table,
    model_inputs,
    plot_tradeoff,
)
from gearshift.methods.slim.jobs import truncate_layers
from gearshift.methods.steps import (
    generate,
    init_weights,
    layer_evaluations,
    lm_blocks,
    make_shared,
    perplexity,
    step_plan,
    steps_from_sizes,
)
from gearshift.methods.steps.jobs import _test_text, finetune_steps, pretrain_decoder, share_model
from gearshift.runtime import load_pretrained, load_tokenizer, save_model
from gearshift.runtime.plan import ForwardPlan, Step
from gearshift.train import TrainConfig

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "steps.json"
GLUE5 = ["sst2", "mrpc", "rte", "stsb", "cola"]
MODEL = "minilm-l6"
DISTIL_STEPS = 600
DEFAULT_SEED = 42  # every row before the seed study; other seeds train into *-s<seed> folders
COLUMNS = REPORT_COLUMNS["steps"]


# ---------------------------------------------------------------------- plans
def drop_plan(num_layers: int, n: int, how: str) -> ForwardPlan:
    """The unshared model cut to ``n`` layer passes: its first n layers (``first``), or Euler
    steps of size L/n through every (L/n)-th layer (``euler``)."""
    if how == "first":
        return ForwardPlan(steps=[Step(block=i, layer=i) for i in range(n)])
    return ForwardPlan(steps=steps_from_sizes(list(range(num_layers)), [num_layers / n] * n))


def settings(args: argparse.Namespace) -> list[tuple[int, str]]:
    out = [(n, "euler") for n in args.n_steps]
    out += [(n, "heun") for n in args.heun_steps]
    return out


def stand_in(row: dict, base: torch.nn.Module):
    """``row``'s model and step plan rebuilt with its shapes from ``base`` (pre-trained
    MiniLM-L6 with the task's head), for the shared timing protocol (benchmarks/retime.py
    --stand-in) where the trained folder is gone: a step's cost does not depend on the
    weights (the ``latency`` part rests on the same fact). Shared variants are made by
    :func:`make_shared` (mean init) and run at the row's N and solver; the teacher's cuts
    by :func:`drop_plan`; the references fine-tuned from the pre-trained model have its
    (cut) architecture. None for rows this cannot rebuild (decoders)."""
    import copy

    method, extras = row["method"], row.get("extras", {})
    L = base.config.num_layers
    n = extras.get("block_evaluations")
    if method in ("teacher", "unshared-finetuned", "scratch-finetuned"):
        return copy.deepcopy(base), None
    if method.startswith("teacher-drop-"):
        return copy.deepcopy(base), drop_plan(L, n, method.removeprefix("teacher-drop-"))
    if method == "unshared-cut-finetuned":
        return truncate_layers(base, n), None
    if method.startswith("shared-g") and extras.get("n_steps"):
        model = make_shared(base, groups=extras["groups"], layer_norms=extras["layer_norms"])
        return model.eval(), step_plan(model.config, extras["n_steps"], solver=extras["solver"])
    return None


# ---------------------------------------------------------------------- encoders
class Timer:
    """Latency ratios of several plans of one or two models, interleaved in one run."""

    def __init__(self, tokenizer: Any, texts: list, args: argparse.Namespace) -> None:
        self.batches = {size: make_batch(tokenizer, texts, size) for size in (1, 32)}
        self.args = args

    def compare(self, fns: dict[str, Any], reference: str) -> dict[int, Any]:
        """Per batch size, the interleaved :class:`LatencyComparison` of ``fns``."""
        return {
            size: compare_latency(
                fns,
                batch,
                warmup=1 if self.args.quick else 3,
                repeats=self.args.latency_repeats,
                threads=self.args.threads,
                reference=reference,
            )
            for size, batch in self.batches.items()
        }

    def ratios(self, fns: dict[str, Any], reference: str) -> dict[int, dict[str, float]]:
        return {size: cmp.ratios for size, cmp in self.compare(fns, reference).items()}


def limits_training(task, limit: int) -> bool:
    """Whether ``--train-limit`` cuts the task's training split (then the teacher, trained on
    all of it, is not the shared models' fair reference)."""
    return len(load_examples(task, "train", limit=limit + 1)) > limit


def variant_name(
    groups: int,
    mode: str,
    layer_norms: bool = False,
    distil_steps: int | None = None,
    per_group: bool = False,
) -> str:
    """``shared-g<G>-<mode>``, ``-ln`` with per-layer norms, ``-pg`` when a step-aware model
    of several groups draws a step size per group, ``-d<steps>`` when distilled for other
    than the default DISTIL_STEPS (so a longer run gets its own folder and rows). A run of
    another seed keeps the name (its rows are the same setting's, with their own ``seed``);
    its folder is :func:`encoder_folder`'s."""
    name = f"shared-g{groups}-{mode}" + ("-ln" if layer_norms else "")
    if per_group and groups > 1 and mode == "step-aware":
        name += "-pg"
    if distil_steps is not None and distil_steps != DISTIL_STEPS:
        name += f"-d{distil_steps}"
    return name


def encoder_variant(groups: int, mode: str, args: argparse.Namespace) -> str:
    """The name of an encoder variant under ``args`` (its rows' method)."""
    return variant_name(groups, mode, args.layer_norms, args.distil_steps, args.per_group_steps)


def encoder_folder(groups: int, mode: str, args: argparse.Namespace) -> str:
    """The ``runs/steps/`` folder name of an encoder variant: its name, with ``-s<seed>``
    for a seed other than the default (a seed study trains beside the seed-42 models)."""
    name = encoder_variant(groups, mode, args)
    return name if args.seed == DEFAULT_SEED else f"{name}-s{args.seed}"


def distil_config(args: argparse.Namespace, out: Path, steps: int) -> TrainConfig:
    """The distillation run of a shared model (``share_model``) into ``out``."""
    return TrainConfig(
        output_dir=str(out),
        max_steps=steps,
        batch_size=args.batch_size,
        learning_rate=args.distil_lr,
        warmup_ratio=0.06,
        save_every=100,
        eval_every=100,
        seed=args.seed,
        progress=not args.quick,
    )


def make_variant(groups: int, mode: str, args: argparse.Namespace) -> Path:
    sizes = args.step_sizes if mode == "step-aware" else [1.0]
    name = encoder_folder(groups, mode, args)
    out = Path(args.runs) / name
    cfg = distil_config(args, out, args.distil_steps)
    start = time.perf_counter()
    folder = share_model(
        MODEL,
        out,
        groups=groups,
        init="mean",
        layer_norms=args.layer_norms,
        step_sizes=sizes,
        layerwise=True,
        text="wikitext2",
        task=None,
        train_limit=args.distil_steps * args.batch_size,
        max_length=args.max_length,
        train_config=cfg,
        resume=True,
        eval_texts=8 if args.quick else 64,
        per_group_steps=args.per_group_steps,
    )
    print(
        f"[steps] {name}: distilled ({args.distil_steps} steps) "
        f"in {time.perf_counter() - start:.0f} s -> {folder}",
        flush=True,
    )
    return folder


def distil_curve(groups: int, mode: str, args: argparse.Namespace) -> list[dict]:
    """The held-out fidelity logged during a variant's distillation (``eval`` entries of its
    ``log.jsonl``): step, cosine and MSE to the teacher's final states at a = 1 and 2."""
    log = Path(args.runs) / encoder_folder(groups, mode, args) / "log.jsonl"
    if not log.is_file():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    keep = ("step", "cos_a1", "cos_a2", "mse_a1", "mse_a2")
    return [{k: e[k] for k in keep if k in e} for e in entries if e.get("kind") == "eval"]


def finetune_variant(folder: Path, groups: int, mode: str, task, args) -> Path:
    sizes = args.step_sizes if mode == "step-aware" else [1.0]
    return _finetune(str(folder), encoder_folder(groups, mode, args), sizes, task, args)


def _finetune(model: str, name: str, sizes: list[float], task, args) -> Path:
    """Fine-tune ``model`` on ``task`` with the teacher's recipe (and ``--train-limit``) into
    ``<runs>/<name>/<task>``; each batch at a step size drawn from ``sizes``."""
    recipe = TEACHER_RECIPES.get(task.name, {})
    out = Path(args.runs) / name / task.name
    cfg = TrainConfig(
        output_dir=str(out),
        epochs=args.epochs or recipe.get("epochs", 3.0),
        batch_size=32,
        learning_rate=recipe.get("learning_rate", 1e-4),
        warmup_ratio=0.06,
        save_every=200,
        seed=args.seed,
        progress=not args.quick,
    )
    res = finetune_steps(
        model,
        task.name,
        out,
        sizes,
        cfg,
        train_limit=args.train_limit,
        dev_limit=args.dev_limit,
        resume=True,
        per_group_steps=args.per_group_steps,
    )
    print(
        f"[steps] {name} {task.name}: fine-tuned, dev {res.metric} "
        f"{res.score:.2f} ({res.train_seconds:.0f} s)",
        flush=True,
    )
    return res.model_dir


def scratch_model(args: argparse.Namespace) -> Path:
    """MiniLM-L6's architecture and tokenizer with random weights (GPT-2-style init, seed 42),
    saved once under ``<runs>/scratch/init``: the start of the ``scratch-finetuned``
    reference."""
    folder = Path(args.runs) / "scratch" / "init"
    if not (folder / CONFIG_NAME).exists():
        torch.manual_seed(42)
        model = init_weights(load_pretrained(MODEL))
        save_model(model, folder, load_tokenizer(MODEL), {"base_model": MODEL, "random_init": 42})
    return folder


def cut_pretrained(n: int, args: argparse.Namespace) -> Path:
    """The pre-trained model cut to its first ``n`` layers, saved once (no task head) under
    ``<runs>/unshared-cut<n>/init``: the start of the ``unshared-cut-finetuned`` reference."""
    folder = Path(args.runs) / f"unshared-cut{n}" / "init"
    if not (folder / CONFIG_NAME).exists():
        cut = truncate_layers(load_pretrained(MODEL), n)
        save_model(cut, folder, load_tokenizer(MODEL), {"base_model": MODEL, "cut_layers": n})
    return folder


def encoder_rows(task_name: str, args: argparse.Namespace, command: str) -> list[dict]:
    task = get_task(task_name)
    root = teacher_dir(task.name, MODEL)
    if not training_finished(root):
        print(f"[steps] skipping {task.name}: no finished teacher in {root}", flush=True)
        return []
    teacher = load_pretrained(str(root / "best")).eval()
    tok = load_tokenizer(str(root / "best"))
    dev = TaskData.load(task, tok, "dev", args.dev_limit)
    texts = dev_texts(task, args.profile_limit)
    singles = [make_batch(tok, [t], 1) for t in texts]
    timer = Timer(tok, texts, args)
    L = teacher.config.num_layers
    rows = []

    # A seed study (--seed other than 42) trains and scores only the shared variants, untimed:
    # their latency is the seed-42 row's (time does not depend on the weights), and the
    # teacher, its cuts and the references are not re-run.
    study = args.seed != DEFAULT_SEED

    def row(method, setting, model, plan, score, ref, extras, seed=None) -> dict:
        latency = {k: extras.pop(k, None) for k in ("latency_ratio_b1", "latency_ratio_b32")}
        return OperatingPoint(
            seed=seed,
            task=task.name,
            model=MODEL,
            method=method,
            setting=setting,
            metric=task.main_metric,
            score=score,
            reference_score=ref,
            flops_dynamic=flops_per_example(model, singles, plan=plan),
            flops_128=flops_at_length(model, 128, plan=plan),
            params=count_parameters(model),
            command=command,
            **latency,
            extras=extras,
        ).to_dict()

    def scored(model, plan=None) -> tuple[float, dict]:
        """Dev score; classification rows also keep their predictions (``dev_predictions``,
        one digit per example) so the report can test differences for significance."""
        preds, refs = predict(model, dev, plan=plan)
        score = compute_metrics(task, preds, refs)[task.main_metric]
        if task.kind != "classification":
            return score, {}
        return score, {"dev_predictions": encode_labels(preds), "dev_labels": encode_labels(refs)}

    teacher_score, teacher_preds = scored(teacher)
    if study and not args.study_references:
        print(f"[steps] seed study, seed {args.seed}: shared variants only, untimed", flush=True)
        return rows + shared_rows(task, args, teacher, teacher_score, timer, scored, row, study)
    if study:
        print(
            f"[steps] seed study, seed {args.seed}: the references fine-tuned like the shared "
            "models and the shared variants, untimed",
            flush=True,
        )
        return (
            rows
            + reference_rows(task, args, L, teacher_score, timer, scored, row, study)
            + shared_rows(task, args, teacher, teacher_score, timer, scored, row, study)
        )
    fns = {"teacher": forward_fn(teacher)}
    for how in ("first", "euler"):
        for n in args.n_steps:
            if n < L:
                fns[f"drop-{how}-{n}"] = forward_fn(teacher, drop_plan(L, n, how))
    lat = timer.ratios(fns, "teacher")
    rows.append(
        row(
            "teacher",
            "unshared, 6 layers",
            teacher,
            None,
            teacher_score,
            teacher_score,
            {"block_evaluations": L, **_lat(lat, "teacher"), **teacher_preds},
        )
    )
    for how in ("first", "euler"):
        for n in args.n_steps:
            if n >= L:
                continue
            plan = drop_plan(L, n, how)
            score, preds = scored(teacher, plan)
            what = (
                f"first {n} layers"
                if how == "first"
                else f"Euler a={L / n:g} through every {L / n:g}-th layer"
            )
            rows.append(
                row(
                    f"teacher-drop-{how}",
                    f"N={n}: {what}, no re-training",
                    teacher,
                    plan,
                    score,
                    teacher_score,
                    {"block_evaluations": n, **_lat(lat, f"drop-{how}-{n}"), **preds},
                )
            )
    rows += reference_rows(task, args, L, teacher_score, timer, scored, row, study, fns["teacher"])
    return rows + shared_rows(task, args, teacher, teacher_score, timer, scored, row, study)


def reference_rows(task, args, L, teacher_score, timer, scored, row, study, teacher_fn=None):
    """The references fine-tuned like the shared models (their recipe and data): the
    unshared model (``unshared-finetuned``), its first n layers (``unshared-cut-finetuned``,
    ``--cut-references``) and, with ``--scratch-reference``, the architecture from random
    weights; each timed against the teacher (``teacher_fn``), or, in a seed study
    (``study``), fine-tuned with that seed into ``<name>-s<seed>`` folders and untimed.
    ``L``: the teacher's layer count. None of them depends on the task teacher
    (``teacher_independent``); every row carries the fine-tuning seed."""
    rows = []

    def named(name: str) -> str:
        return f"{name}-s{args.seed}" if study else name

    def timing(name: str, model) -> dict:
        if study:
            how = (
                f"not timed: a seed study (seed {args.seed}); the seed-{DEFAULT_SEED} row of "
                "this setting carries the latency"
            )
            return {"timing": {"how": how}}
        fns = {"teacher": teacher_fn, name: forward_fn(model)}
        return _lat(timer.ratios(fns, "teacher"), name)

    if args.reference and args.train_limit and limits_training(task, args.train_limit):
        # The fair reference for the shared models: the unshared pre-trained model fine-tuned
        # with exactly their recipe and data (the teacher saw the whole training split).
        best = _finetune(MODEL, named("unshared"), [1.0], task, args)
        model = load_pretrained(str(best)).eval()
        score, preds = scored(model)
        extras = {"block_evaluations": L, "train_limit": args.train_limit, "model_dir": str(best)}
        extras |= preds | {"teacher_independent": True}
        setting = f"unshared, 6 layers, fine-tuned on {args.train_limit} examples"
        rows.append(
            row(
                "unshared-finetuned",
                setting,
                model,
                None,
                score,
                teacher_score,
                extras | timing("unshared", model),
                seed=args.seed,
            )
        )
    limited = bool(args.train_limit) and limits_training(task, args.train_limit)

    def reference(method: str, name: str, start: Path, layers: int, setting: str) -> dict:
        """``start`` fine-tuned like the shared models (their recipe and data), scored."""
        best = _finetune(str(start), named(name), [1.0], task, args)
        model = load_pretrained(str(best)).eval()
        score, preds = scored(model)
        extras = {"block_evaluations": layers, "model_dir": str(best), **preds}
        extras |= {"teacher_independent": True, **timing(name, model)}
        if limited:
            extras["train_limit"] = args.train_limit
            setting += f" on {args.train_limit} examples"
        return row(method, setting, model, None, score, teacher_score, extras, seed=args.seed)

    for n in args.cut_references if args.reference else []:
        if 1 <= n < L:  # what a user might do instead of sharing: keep the first n layers
            setting = f"N={n}: first {n} layers of the pre-trained model, fine-tuned"
            cut = cut_pretrained(n, args)
            rows.append(reference("unshared-cut-finetuned", f"unshared-cut{n}", cut, n, setting))
    if args.reference and args.scratch_reference:
        setting = "random init, 6 layers, fine-tuned"
        rows.append(reference("scratch-finetuned", "scratch", scratch_model(args), L, setting))
    return rows


def shared_rows(task, args, teacher, teacher_score, timer, scored, row, study) -> list[dict]:
    """The shared variants' rows for ``task``: each variant made, distilled and fine-tuned
    (resumed where its folder has them), then scored at every step setting; timed against
    the teacher unless ``study`` (a seed study: latency None, the seed-42 row has it)."""
    L = teacher.config.num_layers
    rows = []
    for groups in args.groups:
        for mode in args.modes:
            folder = make_variant(groups, mode, args)
            best = finetune_variant(folder, groups, mode, task, args)
            model = load_pretrained(str(best)).eval()
            plans = {(n, s): step_plan(model.config, n, solver=s) for n, s in settings(args)}
            fns = {"teacher": forward_fn(teacher)}
            fns |= {f"{n}-{s}": forward_fn(model, p) for (n, s), p in plans.items()}
            lat = None if study else timer.ratios(fns, "teacher")
            full = plans.get((L, "euler"))
            curve = distil_curve(groups, mode, args)
            ref_score, ref_preds = scored(model, full)
            for (n, s), plan in plans.items():
                score, preds = (
                    (ref_score, ref_preds) if (n, s) == (L, "euler") else scored(model, plan)
                )
                extras = {
                    "groups": groups,
                    "training": mode,
                    "per_group_steps": args.per_group_steps and groups > 1,
                    "layer_norms": args.layer_norms,
                    "solver": s,
                    "n_steps": n,
                    "step_sizes": [st.step_size for st in plan.steps],
                    "block_evaluations": layer_evaluations(plan.steps, s),
                    "score_at_n6": ref_score,
                    "teacher_score": teacher_score,
                    "distil_steps": args.distil_steps,
                    "distil_curve": curve,
                    "model_dir": str(best),
                    # distilled from the pre-trained model and fine-tuned on the task's data:
                    # the task teacher is only the reference score (seeds merge across teachers)
                    "teacher_independent": True,
                    **preds,
                }
                if study:
                    extras["timing"] = {
                        "how": f"not timed: a seed study (seed {args.seed}); the seed-{DEFAULT_SEED}"
                        " row of this setting carries the latency"
                    }
                else:
                    extras |= _lat(lat, f"{n}-{s}")
                if (L, "euler") in plans and not study:
                    extras["latency_ratio_b1_vs_n6"] = lat[1][f"{n}-{s}"] / lat[1][f"{L}-euler"]
                    extras["latency_ratio_b32_vs_n6"] = lat[32][f"{n}-{s}"] / lat[32][f"{L}-euler"]
                rows.append(
                    row(
                        encoder_variant(groups, mode, args),
                        f"N={n} {s}",
                        model,
                        plan,
                        score,
                        teacher_score,
                        extras,
                        seed=args.seed,
                    )
                )
            print(markdown_table(rows[-len(plans) :], COLUMNS), flush=True)
    return rows


def _lat(lat: dict, name: str) -> dict[str, float]:
    """The latency ratios of candidate ``name`` (to the teacher) at batch 1 and 32."""
    return {"latency_ratio_b1": lat[1][name], "latency_ratio_b32": lat[32][name]}


# ---------------------------------------------------------------------- decoders
def decoder_rows(args: argparse.Namespace, command: str) -> list[dict]:
    """Train the unshared decoder (unless ``--no-unshared``) and one shared decoder per
    ``--groups`` x ``--modes`` from scratch on WikiText-2, and score each at every N. A seed
    study (``--seed`` other than 42) trains into ``<name>-s<seed>`` folders with that seed
    (weights drawn and batches ordered by it; the tokenizer is the same) and scores
    perplexity only: generation is timed on the seed-42 models."""
    test_text = _test_text(None)
    study = args.seed != DEFAULT_SEED
    variants = [(None, "naive")] * (not args.no_unshared)
    variants += [(g, m) for g in args.groups for m in args.modes]
    rows: list[dict] = []
    for groups, mode in variants:
        name = (
            "unshared"
            if groups is None
            else variant_name(groups, mode, per_group=args.per_group_steps)
        )
        out = Path(args.runs) / "decoder" / (f"{name}-s{args.seed}" if study else name)
        cfg = TrainConfig(
            output_dir=str(out),
            max_steps=args.lm_steps,
            batch_size=16,
            learning_rate=1e-3,
            warmup_ratio=0.05,
            save_every=200,
            seed=args.seed,
            progress=not args.quick,
        )
        start = time.perf_counter()
        folder = pretrain_decoder(
            out,
            None,  # an 8k byte-level BPE trained on the text (the same for every variant)
            groups,
            args.step_sizes if mode == "step-aware" else [1.0],
            args.block_size,
            train_config=cfg,
            resume=True,
            per_group_steps=args.per_group_steps,
        )
        print(f"[steps] decoder {name}: trained in {time.perf_counter() - start:.0f} s", flush=True)
        model = load_pretrained(str(folder)).eval()
        tok = load_tokenizer(str(folder))
        test = lm_blocks(tok, test_text, args.block_size, limit=args.eval_blocks)
        prompt = torch.tensor([b["input_ids"][:16] for b in test[:4]])
        L = model.config.num_layers
        if groups is None:
            plans = {(L, "euler"): None}
            plans |= {(n, "first"): drop_plan(L, n, "first") for n in args.n_steps if n < L}
            plans |= {(n, "drop-euler"): drop_plan(L, n, "euler") for n in args.n_steps if n < L}
        else:
            plans = {(n, s): step_plan(model.config, n, solver=s) for n, s in settings(args)}
        ref_ppl = None
        speed = (
            {}
            if study
            else generation_speed(model, prompt, plans, args.gen_tokens, args.gen_repeats, L)
        )
        timing = (
            {
                "timing": {
                    "how": f"not timed: a seed study (seed {args.seed}); the "
                    f"seed-{DEFAULT_SEED} model of this setting carries the generation speed"
                }
            }
            if study
            else {}
        )
        for (n, s), plan in plans.items():
            ppl = perplexity(model, test, plan=plan)
            ref_ppl = ppl if (n == L and s == "euler") else ref_ppl
            tps, speedup = speed.get((n, s), (None, None))
            steps = plan.steps if plan is not None else model.steps
            rows.append(
                OperatingPoint(
                    seed=args.seed,
                    task="wikitext2",
                    model="decoder-6x256-bpe8k",
                    method=f"decoder-{name}",
                    setting=f"N={n} {s}",
                    metric="perplexity",
                    score=ppl,
                    reference_score=ref_ppl,
                    flops_128=flops_at_length(model, 128, plan=plan),
                    params=count_parameters(model),
                    command=command,
                    extras={
                        "groups": groups,
                        "training": mode,
                        "n_steps": n,
                        "solver": s,
                        "block_evaluations": layer_evaluations(
                            steps, "heun" if s == "heun" else "euler"
                        ),
                        "train_steps": args.lm_steps,
                        "tokens_per_second": tps,
                        "generation_speedup_vs_n6": speedup,
                        "generation_repeats": None if study else args.gen_repeats,
                        "model_dir": str(folder),
                        # trained from scratch, no teacher: the reference is the model's own
                        # N = 6 perplexity, so seeds merge by setting, not by reference
                        "teacher_independent": True,
                        **timing,
                    },
                ).to_dict()
            )
        print(markdown_table(rows[-len(plans) :], COLUMNS), flush=True)
    return rows


def generation_speed(
    model, prompt: torch.Tensor, plans: dict, new_tokens: int, repeats: int, layers: int
) -> dict[tuple[int, str], tuple[float, float]]:
    """Greedy generation speed of every Euler plan: ``(tokens/s, speed-up over N = layers)``,
    medians over ``repeats`` rounds that run each plan once in turn, so every plan meets the
    same machine load and each round's ratio compares like with like."""
    timed = {k: p for k, p in plans.items() if k[1] != "heun"}  # Heun cannot use the cache
    for plan in timed.values():
        generate(model, prompt[:1], 4, plan=plan)  # warm-up
    tps: dict[tuple[int, str], list[float]] = {k: [] for k in timed}
    ratios: dict[tuple[int, str], list[float]] = {k: [] for k in timed}
    for _ in range(repeats):
        this_round = {
            k: generate(model, prompt, new_tokens, plan=p).tokens_per_second
            for k, p in timed.items()
        }
        for k, v in this_round.items():
            tps[k].append(v)
            ratios[k].append(v / this_round[(layers, "euler")])
    return {k: (statistics.median(tps[k]), statistics.median(ratios[k])) for k in timed}


# ---------------------------------------------------------------------- initialisation
def cosine_row(task: str, method: str, n: int, cos: float, command: str, extras: dict) -> dict:
    """A row that scores the cosine (x 100) of a model's hidden states to the teacher's at N
    steps (parts init and fidelity)."""
    return OperatingPoint(
        task=task,
        model=MODEL,
        method=method,
        setting=f"N={n}",
        metric="cosine",
        score=cos * 100,
        reference_score=100.0,
        command=command,
        extras=extras,
    ).to_dict()


def init_rows(args: argparse.Namespace, command: str) -> list[dict]:
    """Mean against one chosen layer as the shared block's start: the cosine of the shared
    model's final hidden states to the unshared MiniLM-L6's on WikiText-2 test text, at N =
    6 and 3 steps, right after sharing and after ``--init-steps`` of naive distillation."""
    from gearshift.data.raw import text_features
    from gearshift.methods.steps import INITS, make_shared

    teacher = load_pretrained(MODEL, head_kind=None).eval()
    tok = load_tokenizer(MODEL)
    feats, collate = text_features(tok, _test_text(None)[: args.init_texts], args.max_length)
    batches = [collate(feats[i : i + 32]) for i in range(0, len(feats), 32)]
    with torch.inference_mode():  # the teacher's states once, not once per model and N
        refs = [teacher(**model_inputs(b)).last_hidden_state for b in batches]

    @torch.inference_mode()
    def cosine(model, n: int) -> float:
        plan = step_plan(model.config, n)
        sims = []
        for b, t in zip(batches, refs, strict=True):
            keep = b["attention_mask"].bool()
            h = model(**model_inputs(b), plan=plan).last_hidden_state[keep]
            sims.append(torch.nn.functional.cosine_similarity(h, t[keep], dim=-1))
        return float(torch.cat(sims).mean())

    rows = []
    for groups in args.groups:
        for init in INITS:
            ln = "-ln" if args.layer_norms else ""
            out = Path(args.runs) / "init" / f"g{groups}-{init}{ln}"
            shared = make_shared(teacher, groups=groups, init=init, layer_norms=args.layer_norms)
            shared.eval()
            before = {n: cosine(shared, n) for n in (6, 3)}
            folder = share_model(
                MODEL,
                out,
                groups=groups,
                init=init,
                layer_norms=args.layer_norms,
                layerwise=True,
                max_length=args.max_length,
                train_config=distil_config(args, out, args.init_steps),
                resume=True,
            )
            tuned = load_pretrained(str(folder)).eval()
            for n in (6, 3):
                after = cosine(tuned, n)
                rows.append(
                    cosine_row(
                        "wikitext2",
                        f"shared-g{groups}-init-{init}{ln}",
                        n,
                        after,
                        command,
                        {
                            "cosine_at_init": before[n],
                            "cosine_after_distillation": after,
                            "distil_steps": args.init_steps,
                            "groups": groups,
                            "init": init,
                            "layer_norms": args.layer_norms,
                        },
                    )
                )
            print(
                f"[steps] init g{groups} {init}: cosine to the teacher at N=6 "
                f"{before[6]:.3f} -> {rows[-2]['score'] / 100:.3f} after {args.init_steps} steps",
                flush=True,
            )
    return rows


def fidelity_rows(args: argparse.Namespace, command: str) -> list[dict]:
    """Cosine and MSE of each distilled shared model's final hidden states to the unshared
    MiniLM-L6's (real tokens), at each of ``--n-steps``, on WikiText-2 test text and each task's dev
    inputs; floors: the teacher's mean state for every token, the mean-initialised model."""
    from gearshift.data.raw import pack_sentences, text_features
    from gearshift.methods.steps import make_shared

    teacher = load_pretrained(MODEL, head_kind=None).eval()
    tok = load_tokenizer(MODEL)
    n_texts = args.fidelity_texts
    passages = pack_sentences(_test_text(None))[:n_texts]
    feats, collate = text_features(tok, passages, args.max_length)
    sources = {"wikitext2": [collate(feats[i : i + 32]) for i in range(0, len(feats), 32)]}
    for name in args.tasks:
        texts = dev_texts(get_task(name), n_texts)
        chunks = [texts[i : i + 32] for i in range(0, len(texts), 32)]
        sources[get_task(name).name] = [make_batch(tok, c, len(c), args.max_length) for c in chunks]

    ln = "-ln" if args.layer_norms else ""
    models = {
        f"shared-g{g}-init-mean{ln}": make_shared(
            teacher, groups=g, init="mean", layer_norms=args.layer_norms
        ).eval()
        for g in args.groups
    }
    for g in args.groups:
        for mode in args.modes:
            name = encoder_variant(g, mode, args)
            folder = Path(args.runs) / name / "model"
            if (folder / CONFIG_NAME).exists():
                models[name] = load_pretrained(str(folder), head_kind=None).eval()
            else:
                print(f"[steps] fidelity: no distilled {name} in {folder}, skipped", flush=True)
    rows = []

    def point(task: str, method: str, n: int, cos: float, mse: float, extras: dict) -> dict:
        extras = {"mse": mse, "texts": n_texts, **extras}
        return cosine_row(task, f"fidelity-{method}", n, cos, command, extras)

    with torch.inference_mode():
        for source, batches in sources.items():
            refs = [(b, teacher(**model_inputs(b)).last_hidden_state) for b in batches]
            states = torch.cat([t[b["attention_mask"].bool()] for b, t in refs])
            mean = states.mean(0)
            floor = float((states - mean).pow(2).mean())
            cos = float(torch.cosine_similarity(states, mean[None], dim=-1).mean())
            rows.append(
                point(source, "teacher-mean-state", 6, cos, floor, {"explained_variance": 0.0})
            )
            for name, model in models.items():
                for n in args.n_steps:
                    plan = step_plan(model.config, n)
                    got = torch.cat(
                        [
                            model(**model_inputs(b), plan=plan).last_hidden_state[
                                b["attention_mask"].bool()
                            ]
                            for b, _ in refs
                        ]
                    )
                    cos = float(torch.cosine_similarity(got, states, dim=-1).mean())
                    mse = float((got - states).pow(2).mean())
                    extras = {"explained_variance": 1 - mse / floor}
                    rows.append(point(source, name, n, cos, mse, extras))
            shown = 1 + len(args.n_steps) * len(models)
            print(markdown_table(rows[-shown:], COLUMNS), flush=True)
    return rows


# ---------------------------------------------------------------------- layer latency
def latency_rows(args: argparse.Namespace, command: str) -> list[dict]:
    """Layer latency at N steps against N = 6, whole model and layers only (T(N) - T(0)),
    batch 1 and 32, every plan of a sharing timed interleaved in one run (untrained shared
    models: the cost of a step does not depend on the weights)."""
    from gearshift.methods.steps import make_shared

    base = load_pretrained(MODEL, head_kind=None).eval()
    tok = load_tokenizer(MODEL)
    task = get_task(args.tasks[0])
    timer = Timer(tok, dev_texts(task, args.profile_limit), args)
    L = base.config.num_layers
    rows = []
    ln = "-ln" if args.layer_norms else ""
    for groups in args.groups:
        model = make_shared(base, groups=groups, init="mean", layer_norms=args.layer_norms).eval()
        plans = {n: step_plan(model.config, n) for n in args.n_steps}
        plans[0] = ForwardPlan(steps=[])  # embeddings and final norm: what no step changes
        fns = {f"N={n}": forward_fn(model, p) for n, p in plans.items()}
        ms = {
            size: {name: st.median_ms for name, st in cmp.stats.items()}
            for size, cmp in timer.compare(fns, f"N={L}").items()
        }
        for n in args.n_steps:
            extras: dict[str, Any] = {"groups": groups, "layer_norms": args.layer_norms}
            for size, m in ms.items():
                layers = (m[f"N={n}"] - m["N=0"]) / (m[f"N={L}"] - m["N=0"])
                extras[f"layer_ratio_b{size}"] = layers
                extras[f"model_ratio_b{size}"] = m[f"N={n}"] / m[f"N={L}"]
                extras[f"median_ms_b{size}"] = m[f"N={n}"]
                extras[f"embeddings_ms_b{size}"] = m["N=0"]
            extras["step_sizes"] = [st.step_size for st in plans[n].steps]
            rows.append(
                OperatingPoint(
                    task=task.name,
                    model=MODEL,
                    method=f"latency-g{groups}{ln}",
                    setting=f"N={n} euler",
                    metric="layer latency ratio to N=6, batch 1",
                    score=extras["layer_ratio_b1"],
                    reference_score=1.0,
                    flops_128=flops_at_length(model, 128, plan=plans[n]),
                    params=count_parameters(model),
                    command=command,
                    extras=extras,
                ).to_dict()
            )
        print(markdown_table(rows[-len(args.n_steps) :], COLUMNS), flush=True)
    return rows


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("part", choices=["encoders", "decoders", "init", "fidelity", "latency"])
    p.add_argument("--tasks", nargs="+", default=GLUE5)
    p.add_argument(
        "--groups",
        type=int,
        nargs="*",
        default=[1, 2],
        help="sharing: 1 = fully shared, 2 = two groups (no value: only teacher and references)",
    )
    p.add_argument(
        "--modes", nargs="+", default=["naive", "step-aware"], choices=["naive", "step-aware"]
    )
    p.add_argument("--step-sizes", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    p.add_argument(
        "--per-group-steps",
        action="store_true",
        help="step-aware models of several groups draw a step size per group, so mixed plans "
        "(N = 3 over two groups of three: steps 1.5, 1.5, 3) are trained too (variants *-pg)",
    )
    p.add_argument(
        "--layer-norms",
        action="store_true",
        default=True,
        help="encoders: shared models keep per-layer LayerNorms (variants named *-ln; the "
        "default, docs/steps.md says why)",
    )
    p.add_argument(
        "--shared-norms",
        dest="layer_norms",
        action="store_false",
        help="encoders: share the LayerNorms too, as ALBERT does (variants without -ln)",
    )
    p.add_argument("--n-steps", type=int, nargs="+", default=[6, 4, 3, 2])
    p.add_argument("--heun-steps", type=int, nargs="+", default=[3, 2])
    p.add_argument(
        "--distil-steps",
        type=int,
        default=DISTIL_STEPS,
        help="distillation steps per shared model (other values: variants named *-d<steps>)",
    )
    p.add_argument("--distil-lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument(
        "--epochs", type=float, help="fine-tuning epochs (default: the teacher's recipe)"
    )
    p.add_argument("--train-limit", type=int, help="fine-tune on the first N training examples")
    p.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the references fine-tuned like the shared models (unshared-finetuned, "
        "unshared-cut-finetuned)",
    )
    p.add_argument(
        "--scratch-reference",
        action="store_true",
        help="encoders: also fine-tune the architecture from random weights, like the shared "
        "models (what fine-tuning alone reaches)",
    )
    p.add_argument(
        "--cut-references",
        type=int,
        nargs="*",
        default=[3],
        help="encoders: also fine-tune the pre-trained model cut to its first N layers, like "
        "the shared models (default: 3, the depth of a = 2)",
    )
    p.add_argument("--dev-limit", type=int)
    p.add_argument("--profile-limit", type=int, default=128, help="dev texts for FLOPs and latency")
    p.add_argument("--latency-repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--lm-steps", type=int, default=800, help="decoder pre-training steps (~6 epochs)"
    )
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--eval-blocks", type=int, default=400, help="WikiText-2 test blocks scored")
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument(
        "--gen-repeats",
        type=int,
        default=7,
        help="decoders: rounds of generation timing (every N in turn; medians)",
    )
    p.add_argument("--init-steps", type=int, default=150, help="part init: distillation steps")
    p.add_argument("--init-texts", type=int, default=256, help="part init: test paragraphs")
    p.add_argument(
        "--fidelity-texts",
        type=int,
        default=128,
        help="part fidelity: WikiText-2 test passages and dev inputs per task",
    )
    p.add_argument("--runs", default="runs/steps")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny budgets everywhere")
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="the training seed; another than 42 is a seed study, trained into *-s<seed> "
        "folders, scored, untimed (encoders: the shared variants only, distillation and "
        "fine-tuning seeded; decoders: the models named by --groups / --modes and, unless "
        "--no-unshared, the unshared one, trained from scratch with it)",
    )
    p.add_argument(
        "--no-unshared",
        action="store_true",
        help="decoders: train and score only the shared models (a seed study of them)",
    )
    p.add_argument(
        "--study-references",
        action="store_true",
        help="encoders, with --seed other than 42: also fine-tune the references fine-tuned "
        "like the shared models (unshared-finetuned, unshared-cut-finetuned and, with "
        "--scratch-reference, scratch-finetuned) with that seed, into *-s<seed> folders, "
        "untimed",
    )
    p.add_argument(
        "--retime",
        action="store_true",
        help="re-time the recorded rows of --tasks from their saved models by the shared "
        "timing protocol (benchmarks/retime.py) instead of running the part",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.distil_steps = min(args.distil_steps, 4)
        args.train_limit = args.train_limit or 64
        args.dev_limit = args.dev_limit or 32
        args.epochs = args.epochs or 1.0
        args.profile_limit = min(args.profile_limit, 8)
        args.latency_repeats = min(args.latency_repeats, 2)
        args.lm_steps = min(args.lm_steps, 4)
        args.eval_blocks = min(args.eval_blocks, 8)
        args.gen_tokens = min(args.gen_tokens, 4)
        args.gen_repeats = min(args.gen_repeats, 2)
        args.init_steps = min(args.init_steps, 2)
        args.init_texts = min(args.init_texts, 16)
        args.fidelity_texts = min(args.fidelity_texts, 16)
        if args.runs == "runs/steps":
            args.runs = "runs/steps-quick"
        if args.out == RESULTS:
            args.out = Path("runs/steps-quick/steps.json")
    return args


def plot_rows(rows: list[dict], task: str) -> list[dict]:
    """The points of ``steps_<task>.png``, from every steps row of the task in the results
    file (not only this run's, so a seed study or one more variant redraws the whole plot):
    the timed run (seed 42, or a row without a seed), Euler steps (a Heun point costs what
    the Euler point of twice its N does) and the task's encoder rows (no ``fidelity-``,
    ``latency-`` or ``decoder-`` row)."""
    return [
        r
        for r in rows
        if r["task"] == task
        and r.get("seed") in (None, DEFAULT_SEED)
        and not r["method"].startswith(("fidelity-", "decoder-", "latency-"))
        and "heun" not in r["setting"]
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.retime:  # the one timing protocol, shared by every benchmark
        from retime import main as retime_main

        threads = ["--threads", str(args.threads)] if args.threads else []
        return retime_main(["steps", "--tasks", *args.tasks, *threads] + ["--quick"] * args.quick)
    command = command_line(__file__, argv)
    sink = ResultsSink(args.out, "steps")
    with fixed_threads(args.threads):
        if args.part == "decoders":
            sink.add(decoder_rows(args, command))
        elif args.part == "init":
            sink.add(init_rows(args, command))
        elif args.part == "fidelity":
            sink.add(fidelity_rows(args, command))
        elif args.part == "latency":
            sink.add(latency_rows(args, command))
        else:
            for task in args.tasks:
                rows = encoder_rows(task, args, command)
                if rows:
                    sink.add(rows)
                    name = get_task(task).name
                    plot_tradeoff(
                        plot_rows(sink.rows, name),
                        args.out.parent / f"steps_{name}.png",
                        x="flops_128",
                        title=f"{name}: shared MiniLM-L6 in N Euler steps vs the teacher (seed "
                        f"{DEFAULT_SEED})",
                    )
    if not sink.new:
        print("[steps] nothing measured", flush=True)
        return 1
    print(f"[steps] {len(sink.new)} rows written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
