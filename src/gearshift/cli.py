"""The ``gearshift`` command: one verb per job.

The core verbs are defined here; features register theirs through a function in their own
module, listed in :data:`PLUGGED_VERBS` and imported only when one of its verbs runs (or its
``--help`` is asked), so that ``gearshift --help`` and ``gearshift --version`` answer without
importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path

from gearshift import __version__
from gearshift.errors import GearshiftError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Verbs other modules add: "module:function" (called with the top-level subparsers) -> the
# verbs it registers, each with its one-line help for `gearshift --help`. A feature adds one
# entry here; its module is imported only when one of its verbs is used.
PLUGGED_VERBS: dict[str, dict[str, str]] = {
    "gearshift.methods.plugins.cli:add_cli": {
        "plugin": "train, evaluate and compare compression plugins",
    },
    "gearshift.methods.factorize.cli:add_cli": {
        "factorize": "offline compression (SVD family or autoencoder), no training run",
    },
    "gearshift.methods.steps.cli:add_cli": {
        "share": "make a parameter-shared model from an unshared one and distil it on raw text",
        "steps": "run shared models in fewer, larger steps",
    },
    "gearshift.methods.slim.cli:add_cli": {
        "slim": "COST-EFF: prune width, keep depth, add an exit after every layer, exit early",
    },
    "gearshift.compose.cli:add_cli": {
        "stack": "stack methods on one model (edits, then plugins / exits / steps) into one folder",
    },
    "gearshift.engine.cli:add_cli": {
        "export": "write a model as an ONNX folder or a Hugging Face checkpoint folder",
        "tune": "measure candidate models on dev and write the best one under a budget",
    },
    "gearshift.serve.cli:add_parsers": {
        "serve": "serve a model over HTTP, shifting gears with the load",
        "gears": "gear tables for `gearshift serve`",
    },
}

# What to do after Ctrl-C, by verb (default: --resume for a verb that takes it, else a
# re-run).
_INTERRUPT_HINTS = {
    "slim": "run the same command again: finished stages are skipped and an interrupted "
    "distillation resumes from its checkpoint",
    "demo": "run the same command again to continue (the demo resumes by default; --fresh "
    "starts over)",
}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default (skipping empty ones: None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "%(default)" in help_text:
            return help_text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return help_text + " (default: %(default)s)"
        return help_text


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose verbs (and their verbs) show defaults in --help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


# ---------------------------------------------------------------------- shared options
def _add_task_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("task", "a registered task by name, or your own file")
    g.add_argument(
        "--task",
        help="task name (see `gearshift tasks`), e.g. sst2, mrpc, stsb, conll2003; default: "
        "the task --model records",
    )
    g.add_argument(
        "--task-config", help="JSON file describing a custom task (see README: custom data)"
    )
    g.add_argument("--train-file", help="custom task: CSV/TSV/JSONL training file")
    g.add_argument(
        "--dev-file", help="custom task: dev file (default: hold out --dev-fraction of train)"
    )
    g.add_argument(
        "--text-column", help="custom task: column (name or 0-based index) with the text"
    )
    g.add_argument("--text-pair-column", help="custom task: column with the second text of a pair")
    g.add_argument("--label-column", help="custom task: column with the label")
    g.add_argument(
        "--no-header",
        action="store_true",
        help="custom task: the CSV/TSV files have no header row (give columns as 0-based indexes)",
    )
    g.add_argument(
        "--task-kind",
        choices=["classification", "regression"],
        default="classification",
        help="custom task: what the label is",
    )
    g.add_argument(
        "--dev-fraction",
        type=float,
        default=0.1,
        help="custom task without --dev-file: share of the training rows held out as dev",
    )
    g.add_argument(
        "--data-dir",
        help="folder with the task's files (default: GLUE_DIR / GEARSHIFT_DATA / ../shared/data)",
    )


def _add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=["eager", "compiled", "onnx", "onnx-int8"],
        default="eager",
        help="run the model on the runtime (eager), torch.compile (compiled), ONNX Runtime "
        "fp32 (onnx) or ONNX Runtime dynamic int8 (onnx-int8); see gearshift.engine",
    )


def _add_setting(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--setting",
        nargs="+",
        metavar="PROVIDER=VALUE",
        help="a stack's operating point for this run (e.g. plugins=k4 exits=entropy:0.2; "
        "PROVIDER=none turns one off); default: the stack's own default setting",
    )


def _apply_setting(model, args: argparse.Namespace):
    """``model`` (a stack) with ``--setting`` as its default setting for this run."""
    from gearshift.runtime.stack import Stack

    values = getattr(args, "setting", None)
    if not values:
        return model
    if not isinstance(model, Stack):
        raise GearshiftError(
            f"--setting needs a stack, and {args.model} is a plain model: build one with "
            "`gearshift stack` (or drop --setting)"
        )
    from gearshift.compose.build import parse_default

    chosen = {k: (None if v == "none" else v) for k, v in parse_default(values).items()}
    model.default_setting = {**model.default_setting, **chosen}
    return model


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice, usually all cores)",
    )


def _apply_threads(args: argparse.Namespace) -> None:
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if threads < 1:
        raise GearshiftError(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def _resolve_task(args: argparse.Namespace, model_dir: str | None = None):
    """Return the task of a command: a custom task from the flags, ``--task``, or the task
    the model folder records (custom tasks included)."""
    from gearshift.data import CustomTaskConfig, make_custom_task
    from gearshift.data.recorded import resolve_task

    if getattr(args, "task_config", None):
        return make_custom_task(CustomTaskConfig.from_json(Path(args.task_config)))
    if getattr(args, "train_file", None):
        if not args.text_column or not args.label_column:
            raise GearshiftError(
                "a custom task from --train-file needs --text-column and --label-column"
            )
        return make_custom_task(
            CustomTaskConfig(
                path=args.train_file,
                dev_path=args.dev_file,
                text_column=args.text_column,
                text_pair_column=args.text_pair_column,
                label_column=args.label_column,
                kind=args.task_kind,
                dev_fraction=args.dev_fraction,
                has_header=not getattr(args, "no_header", False),
            )
        )
    return resolve_task(model_dir, getattr(args, "task", None))


def _train_config(args: argparse.Namespace, output: str):
    from gearshift.train import TrainConfig

    return TrainConfig(
        output_dir=output,
        learning_rate=args.lr,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        warmup_ratio=args.warmup_ratio,
        seed=args.seed,
        eval_every=args.eval_every,
        save_every=args.save_every,
        progress=not args.no_progress,
        keep_optimizer=args.keep_optimizer,
    )


# ---------------------------------------------------------------------- verbs
def cmd_finetune(args: argparse.Namespace) -> int:
    from gearshift.data.recorded import check_model_exists
    from gearshift.train.finetune import check_output_free, describe_kept, finetune

    check_model_exists(args.model)
    check_output_free(args.output, args.resume, args.overwrite)
    task = _resolve_task(args)
    res = finetune(
        args.model,
        task,
        args.output,
        _train_config(args, args.output),
        train_limit=args.train_limit,
        dev_limit=args.dev_limit,
        max_length=args.max_length,
        data_dir=args.data_dir,
        resume=args.resume,
    )
    print(f"best model: {res.model_dir}\ndev {res.metric}: {res.score:.2f}")
    print(json.dumps(res.dev_metrics, indent=2))
    print(describe_kept(args.output))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from gearshift.data.recorded import (
        check_task_fits,
        describe_head,
        head_is_trained,
        model_for_task,
        untrained_head_warning,
    )
    from gearshift.data.taskdata import TaskData
    from gearshift.measure.evaluate import evaluate

    task = _resolve_task(args, args.model)
    forced = check_task_fits(args.model, task, force=args.force_task)
    if forced:
        print(forced, file=sys.stderr)
    model, tok = model_for_task(args.model, task)
    model = _apply_setting(model, args)
    trained = head_is_trained(model)
    if not trained:
        print(untrained_head_warning(args.model, task), file=sys.stderr)
    data = TaskData.load(task, tok, args.split, args.limit, args.max_length, args.data_dir)
    from gearshift.engine.cli import apply_engine

    metrics = evaluate(
        apply_engine(model, args), data, batch_size=args.batch_size, progress=not args.no_progress
    )
    out = {
        "model": args.model,
        "task": task.name,
        "split": args.split,
        "metric": task.main_metric,
        "score": metrics[task.main_metric],
        "metrics": metrics,
        "head": describe_head(model),
        "head_trained": trained,
        "engine": args.engine,
    }
    if hasattr(model, "describe") and hasattr(model, "providers"):  # a stack
        out["setting"] = model.describe(model.default_setting)
    _emit(out, args.json)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from gearshift.api import load, predict, read_inputs, write_predictions

    texts, pairs, lines = read_inputs(
        args.input, args.text_column, args.text_pair_column, has_header=not args.no_header
    )
    from gearshift.engine.cli import apply_engine

    model = _apply_setting(load(args.model), args)
    rows = predict(
        apply_engine(model, args),
        texts,
        pairs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        progress=not args.no_progress,
    )
    if args.output:
        path = write_predictions(args.output, rows, texts, pairs, lines)
        print(f"{len(rows)} predictions written to {path}", file=sys.stderr)
    else:
        for row, n in zip(rows, lines):
            print(json.dumps({"line": n, **row}, ensure_ascii=False))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from gearshift.api import load
    from gearshift.demo import profile
    from gearshift.measure import profile_markdown

    task = _resolve_task(args, args.model)
    model = _apply_setting(load(args.model), args)
    result = profile(
        model,
        model.tokenizer,
        task,
        limit=args.limit,
        threads=args.threads,
        data_dir=args.data_dir,
        progress=not args.no_progress,
    )
    result.update(model_name=args.model, task=task.name)
    if args.engine != "eager":
        from gearshift.engine.cli import engine_latency

        result["engine"] = engine_latency(model, args.engine, task, args)
    print(profile_markdown(result))
    if args.json:
        _emit(result, args.json, quiet=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gearshift.demo import demo

    demo(
        args.model,
        args.task or "sst2",
        args.output,
        train_limit=args.train_limit,
        dev_limit=args.dev_limit,
        epochs=args.epochs,
        threads=args.threads,
        resume=not args.fresh,
        profile_limit=args.profile_limit,
    )
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from gearshift.data import get_task, list_tasks

    for name in list_tasks():
        t = get_task(name)
        print(f"{t.name:12s} {t.kind:22s} metric={t.main_metric:10s} {t.description}")
    return 0


def _emit(obj: dict, path: str | None, quiet: bool = False) -> None:
    text = json.dumps(obj, indent=2, default=str)
    if not quiet:
        print(text)
    if path:
        from gearshift.atomic import write_text_atomic

        write_text_atomic(path, text + "\n")


# ---------------------------------------------------------------------- the parser
def _add_core_verbs(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a teacher on a task")
    p.add_argument(
        "--model",
        default="minilm-l6",
        help="HF checkpoint folder, hub name, gearshift folder or 'minilm-l6'",
    )
    p.add_argument(
        "--output", required=True, help="output folder (the best model goes to OUTPUT/best)"
    )
    _add_task_args(p)
    p.add_argument("--epochs", type=float, default=3.0, help="passes over the training set")
    p.add_argument(
        "--max-steps", type=int, default=0, help="stop after this many steps (0: --epochs)"
    )
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (AdamW)")
    p.add_argument("--batch-size", type=int, default=32, help="training examples per step")
    p.add_argument(
        "--warmup-ratio", type=float, default=0.06, help="share of steps of linear warm-up"
    )
    p.add_argument("--max-length", type=int, default=128, help="tokens per example (truncation)")
    p.add_argument("--seed", type=int, default=42, help="seed of the head, shuffling, dropout")
    p.add_argument(
        "--eval-every", type=int, default=0, help="steps between evaluations (0: each epoch)"
    )
    p.add_argument(
        "--save-every", type=int, default=200, help="steps between resumable checkpoints"
    )
    p.add_argument("--train-limit", type=int, help="use the first N training examples")
    p.add_argument("--dev-limit", type=int, help="evaluate on the first N dev examples")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT/checkpoint after an interruption",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in OUTPUT (without it, an existing run is refused)",
    )
    p.add_argument(
        "--keep-optimizer",
        action="store_true",
        help="keep the optimizer state in OUTPUT/checkpoint when training ends (deleted by "
        "default: only an unfinished run needs it)",
    )
    _add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="score a model on a task split")
    p.add_argument("--model", required=True, help="model folder (or HF checkpoint, alias)")
    _add_task_args(p)
    p.add_argument("--split", default="dev", help="split to score: dev, test or train")
    p.add_argument("--limit", type=int, help="score only the first N examples")
    p.add_argument("--batch-size", type=int, default=64, help="examples per forward pass")
    p.add_argument("--max-length", type=int, default=128, help="tokens per example (truncation)")
    p.add_argument(
        "--force-task",
        action="store_true",
        help="score a model fine-tuned on another task anyway (its score means little)",
    )
    p.add_argument("--json", help="also write the result to this file")
    _add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_engine(p)
    _add_setting(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "predict",
        help="label your own texts: label names and probabilities (or a score) per line",
        description="Run a fine-tuned model on your texts. Input: .txt (one text per line), "
        ".csv/.tsv (a column) or .jsonl (a key). Output: one JSON line per input on stdout, "
        "or --output FILE.jsonl / FILE.csv. The same as gearshift.predict(model, texts).",
    )
    p.add_argument("--model", required=True, help="model folder (any kind gearshift.load takes)")
    p.add_argument("--input", required=True, help="the texts: .txt, .csv, .tsv or .jsonl")
    p.add_argument(
        "--text-column",
        help="csv/tsv: header name or 0-based index of the text; jsonl: its key (default: a "
        "column named text/sentence/..., or the only one; jsonl 'text')",
    )
    p.add_argument("--text-pair-column", help="the second text, for sentence-pair models")
    p.add_argument("--no-header", action="store_true", help="csv/tsv without a header row")
    p.add_argument("--output", help="write FILE.jsonl or FILE.csv instead of printing")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    p.add_argument("--max-length", type=int, default=128, help="tokens per text (truncation)")
    _add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_engine(p)
    _add_setting(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "profile", help="parameters, FLOPs, latency and memory on real dev sentences"
    )
    p.add_argument("--model", required=True, help="model folder (any kind gearshift.load takes)")
    _add_task_args(p)
    p.add_argument("--limit", type=int, default=256, help="dev sentences to measure on")
    _add_threads(p)
    p.add_argument("--json", help="also write the result to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_engine(p)
    _add_setting(p)
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser(
        "demo", help="the main job: fine-tune, evaluate, profile, print operating points"
    )
    p.add_argument("--model", default="minilm-l6", help="the pre-trained model to start from")
    p.add_argument("--task", default="sst2", help="a registered task (see `gearshift tasks`)")
    p.add_argument("--output", default="runs/demo", help="where the run's folders go")
    p.add_argument(
        "--train-limit", type=int, default=4000, help="fine-tune the teacher on N examples"
    )
    p.add_argument(
        "--dev-limit", type=int, help="evaluate on the first N dev examples (default: all)"
    )
    p.add_argument("--profile-limit", type=int, default=256, help="dev sentences to profile on")
    p.add_argument("--epochs", type=float, default=1.0, help="teacher fine-tuning epochs")
    _add_threads(p)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted demo (the default; accepted for symmetry)",
    )
    p.add_argument(
        "--fresh", action="store_true", help="ignore an earlier run's checkpoint in OUTPUT"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tasks", help="list the registered tasks")
    p.set_defaults(func=cmd_tasks)


def _chosen_verb(argv: list[str]) -> str | None:
    """The first argument that is not an option: the verb, if any."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def _add_plugged(sub, spec: str) -> None:
    module, _, func = spec.partition(":")
    getattr(importlib.import_module(module), func)(sub)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Return the ``gearshift`` parser. With ``argv`` (the arguments to parse) only the
    module of the chosen verb is imported; other plugged verbs are listed by name and help.
    Without it every verb is built in full."""
    parser = _Parser(prog="gearshift", description="Make transformer models cheaper to run.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("--version", action="version", version=f"gearshift {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    _add_core_verbs(sub)
    verb = _chosen_verb(argv) if argv is not None else None
    for spec, verbs in PLUGGED_VERBS.items():
        if argv is None or verb in verbs:
            _add_plugged(sub, spec)
    for parser_ in sub.choices.values():
        _ensure_threads(parser_)
    for verbs in PLUGGED_VERBS.values():
        for name, help_text in verbs.items():
            if name not in sub.choices:  # listed in --help; built when it is the verb
                sub.add_parser(name, help=help_text, add_help=False)
    return parser


# Help for options many verbs share, used where a verb defines one without help text.
COMMON_HELP = {
    "--model": "model folder (or HF checkpoint, alias)",
    "--task": "task name (see `gearshift tasks`)",
    "--output": "output folder",
    "--epochs": "passes over the training set",
    "--lr": "peak learning rate",
    "--batch-size": "examples per step (or per forward pass)",
    "--warmup-ratio": "share of steps of linear warm-up",
    "--max-length": "tokens per example (truncation)",
    "--seed": "random seed",
    "--data-dir": "folder with the task's files (default: GLUE_DIR / GEARSHIFT_DATA / "
    "../shared/data)",
    "--no-progress": "no progress bar",
    "--split": "split to score: dev, test or train",
    "--limit": "use only the first N examples",
    "--dev-limit": "evaluate on the first N dev examples",
    "--train-limit": "use the first N training examples",
}


def _ensure_threads(parser: argparse.ArgumentParser) -> None:
    """Give every runnable verb (and sub-verb) a ``--threads`` option if it has none, and
    shared options without help text their common help."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subs:
        for child in action.choices.values():
            _ensure_threads(child)
    for action in parser._actions:
        if not action.help and action.option_strings:
            action.help = COMMON_HELP.get(action.option_strings[0], action.help)
    if subs or "func" not in {k for k in parser._defaults}:
        return
    if "--threads" not in parser._option_string_actions:
        _add_threads(parser)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        _apply_threads(args)
        return args.func(args)
    except GearshiftError as exc:
        print(f"gearshift: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        default = (
            "run the same command with --resume to continue from the last checkpoint"
            if hasattr(args, "resume")
            else "nothing resumable was saved; run the same command again"
        )
        hint = _INTERRUPT_HINTS.get(args.command, default)
        print(f"gearshift: interrupted; {hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
