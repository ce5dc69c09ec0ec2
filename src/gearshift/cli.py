"""The ``gearshift`` command: one verb per job (see gearshift.jobs)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from gearshift.errors import GearshiftError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _add_task_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("task", "a registered task by name, or your own file")
    g.add_argument(
        "--task", help="task name (see `gearshift tasks`), e.g. sst2, mrpc, stsb, conll2003"
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
        "--task-kind", choices=["classification", "regression"], default="classification"
    )
    g.add_argument("--dev-fraction", type=float, default=0.1)
    g.add_argument(
        "--data-dir",
        help="folder with the task's files (default: GLUE_DIR / GEARSHIFT_DATA / ../shared/data)",
    )


def _resolve_task(args: argparse.Namespace, model_dir: str | None = None):
    from gearshift.data import CustomTaskConfig, get_task, make_custom_task
    from gearshift.jobs import task_of_folder

    if args.task_config:
        return make_custom_task(CustomTaskConfig.from_json(Path(args.task_config)))
    if args.train_file:
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
            )
        )
    if args.task:
        return get_task(args.task)
    if model_dir:
        from gearshift.jobs import custom_task_of_folder

        task = custom_task_of_folder(model_dir) or task_of_folder(model_dir)
        if task is not None:
            return get_task(task)
    raise GearshiftError(
        "no task given: pass --task NAME (see `gearshift tasks`) or --train-file/--task-config"
    )


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
    )


def cmd_finetune(args: argparse.Namespace) -> int:
    from gearshift.jobs import finetune

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
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from gearshift.jobs import TaskData, evaluate, model_for_task

    task = _resolve_task(args, args.model)
    model, tok = model_for_task(args.model, task)
    data = TaskData.load(task, tok, args.split, args.limit, args.max_length, args.data_dir)
    metrics = evaluate(model, data, batch_size=args.batch_size)
    out = {
        "model": args.model,
        "task": task.name,
        "split": args.split,
        "metric": task.main_metric,
        "score": metrics[task.main_metric],
        "metrics": metrics,
    }
    _emit(out, args.json)
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from gearshift.jobs import profile
    from gearshift.measure import profile_markdown
    from gearshift.runtime import load_pretrained, load_tokenizer

    task = _resolve_task(args, args.model)
    model = load_pretrained(args.model)
    tok = load_tokenizer(args.model)
    result = profile(
        model, tok, task, limit=args.limit, threads=args.threads, data_dir=args.data_dir
    )
    result.update(model_name=args.model, task=task.name)
    print(profile_markdown(result))
    if args.json:
        _emit(result, args.json, quiet=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gearshift.jobs import demo

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
        Path(path).write_text(text + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gearshift", description="Make transformer models cheaper to run."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

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
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--eval-every", type=int, default=0, help="steps between evaluations (0: each epoch)"
    )
    p.add_argument(
        "--save-every", type=int, default=200, help="steps between resumable checkpoints"
    )
    p.add_argument("--train-limit", type=int)
    p.add_argument("--dev-limit", type=int)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT/checkpoint after an interruption",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="score a model on a task split")
    p.add_argument("--model", required=True)
    _add_task_args(p)
    p.add_argument("--split", default="dev")
    p.add_argument("--limit", type=int)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--json", help="also write the result to this file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "profile", help="parameters, FLOPs, latency and memory on real dev sentences"
    )
    p.add_argument("--model", required=True)
    _add_task_args(p)
    p.add_argument("--limit", type=int, default=256, help="dev sentences to measure on")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--json", help="also write the result to this file")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser(
        "demo", help="the main job: fine-tune, evaluate, profile, print operating points"
    )
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--task", default="sst2")
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--train-limit", type=int, default=4000)
    p.add_argument(
        "--dev-limit", type=int, help="evaluate on the first N dev examples (default: all)"
    )
    p.add_argument("--profile-limit", type=int, default=256, help="dev sentences to profile on")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--threads", type=int)
    p.add_argument(
        "--fresh", action="store_true", help="ignore an earlier run's checkpoint in OUTPUT"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("tasks", help="list the registered tasks")
    p.set_defaults(func=cmd_tasks)

    # Each method adds its own verbs.
    from gearshift.methods.plugins.cli import add_cli as add_plugin_cli

    add_plugin_cli(sub)
    from gearshift.methods.factorize.cli import add_cli as add_factorize_cli

    add_factorize_cli(sub)
    from gearshift.methods.steps.cli import add_cli as add_steps_cli

    add_steps_cli(sub)
    from gearshift.methods.slim.cli import add_cli as add_slim_cli

    add_slim_cli(sub)
    from gearshift.serve.cli import add_parsers as add_serve_parsers

    add_serve_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except GearshiftError as exc:
        print(f"gearshift: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "gearshift: interrupted; run the same command with --resume to continue",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
