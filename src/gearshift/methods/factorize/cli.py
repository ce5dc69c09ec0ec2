"""``gearshift factorize`` (the demo's factorize stage is :mod:`.demo`).

    gearshift factorize --model TEACHER_DIR --method svdllm --ratio 4 --output runs/f4
    gearshift factorize --model minilm-l6 --method ae --grouped --calibration text --output ...

:func:`add_cli` registers the verb with ``gearshift.cli``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gearshift.methods.factorize.config import METHODS, MODULE_TYPES, FactorizeConfig, field_help


def add_cli(subparsers: Any) -> None:
    """Add the ``factorize`` verb to the ``gearshift`` command's subparsers."""
    p = subparsers.add_parser(
        "factorize",
        help="offline compression (SVD family or autoencoder), no training run",
        description="Compress a model's Linear weights and word embedding to a target ratio of "
        "stored parameters, and save it in compressed form (see docs/factorize.md).",
    )
    p.add_argument(
        "--model",
        required=True,
        help="gearshift folder (e.g. a teacher), HF checkpoint or 'minilm-l6'",
    )
    p.add_argument("--output", required=True, help="folder for the compressed model")
    p.add_argument("--method", choices=METHODS, default="svdllm", help=field_help("method"))
    p.add_argument("--ratio", type=float, default=4.0, help=field_help("ratio"))
    p.add_argument("--grouped", action="store_true", help=field_help("grouped"))
    p.add_argument("--group-size", type=int, default=0, help=field_help("group_size"))
    p.add_argument(
        "--modules",
        nargs="+",
        default=list(MODULE_TYPES),
        metavar="TYPE",
        help=field_help("modules"),
    )
    p.add_argument("--layers", type=int, nargs="+", help=field_help("layers"))
    p.add_argument(
        "--calibration",
        choices=["task", "text"],
        default="task",
        help="calibration inputs: the task's train split, or WikiText-2 raw text",
    )
    p.add_argument("--calibration-examples", type=int, default=256, help="calibration examples")
    p.add_argument(
        "--task",
        help="task for calibration and --evaluate (default: the one the model was trained on)",
    )
    p.add_argument("--data-dir", help="folder with the task's files")
    p.add_argument("--ae-steps", type=int, help=field_help("ae_steps"))
    p.add_argument(
        "--config", help="JSON file with FactorizeConfig fields; the flags above override it"
    )
    p.add_argument(
        "--evaluate", action="store_true", help="score the model on the dev split before and after"
    )
    p.add_argument("--report", help="also write the full compression report (JSON) to this file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_factorize)


def config_from_args(args: argparse.Namespace) -> FactorizeConfig:
    """The FactorizeConfig of a ``factorize`` command line (``--config`` file, then flags)."""
    data: dict[str, Any] = {}
    if args.config:
        data = json.loads(Path(args.config).read_text())
    data.update(
        method=args.method,
        ratio=args.ratio,
        grouped=args.grouped or data.get("grouped", False),
        group_size=args.group_size,
        modules=args.modules,
        progress=not args.no_progress,
    )
    if args.layers is not None:
        data["layers"] = args.layers
    if args.ae_steps is not None:
        data["ae_steps"] = args.ae_steps
    return FactorizeConfig.from_dict(data)


def cmd_factorize(args: argparse.Namespace) -> int:
    from gearshift.data import get_task
    from gearshift.data.recorded import task_of_folder
    from gearshift.data.taskdata import TaskData
    from gearshift.measure.evaluate import evaluate
    from gearshift.methods.factorize.calibration import calibration_batches
    from gearshift.methods.factorize.compress import compress
    from gearshift.methods.factorize.model import save_factorized
    from gearshift.runtime import load_pretrained, load_tokenizer
    from gearshift.runtime.io import read_meta

    config = config_from_args(args)
    model = load_pretrained(args.model)
    tokenizer = load_tokenizer(args.model)
    task_name = args.task or task_of_folder(args.model)
    task = get_task(task_name) if task_name else None
    batches = None
    if config.needs_gram or config.needs_fisher:
        batches = calibration_batches(
            tokenizer, args.calibration, task, args.calibration_examples, data_dir=args.data_dir
        )
    dev = (
        TaskData.load(task, tokenizer, "dev", data_dir=args.data_dir)
        if args.evaluate and task
        else None
    )
    before = evaluate(model, dev)[task.main_metric] if dev is not None else None
    model, report = compress(model, config, batches)
    print(report.summary())
    extra: dict[str, Any] = {"base_model": args.model}
    if (Path(args.model) / "gearshift.json").is_file():
        meta = read_meta(args.model)
        if "task" in meta:
            extra["task"] = meta["task"]
    folder = save_factorized(model, args.output, config, tokenizer=tokenizer, extra=extra)
    print(f"saved to {folder}")
    if dev is not None:
        after = evaluate(model, dev)[task.main_metric]
        print(f"dev {task.main_metric}: {before:.2f} before, {after:.2f} after compression")
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0
