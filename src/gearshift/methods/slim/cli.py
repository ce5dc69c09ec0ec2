"""``gearshift slim``: teacher -> multi-exit assistant -> iterative joint pruning -> recovery,
then a score/FLOPs sweep over exit thresholds on the dev set; wired in with :func:`add_cli`."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from .jobs import REGRESSION_TOLERANCES
from .train import SlimConfig

DEFAULT_THRESHOLDS = [0.0, 0.01, 0.03, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "slim",
        help="COST-EFF: prune width, keep depth, add an exit after every layer, exit early",
    )
    p.add_argument("--model", required=True, help="the fine-tuned teacher folder")
    p.add_argument("--task", help="default: the task recorded in --model")
    p.add_argument("--output", required=True, type=Path, help="stages go to OUTPUT/<stage>")
    helps = {f.name: f.metadata.get("help", "") for f in fields(SlimConfig)}
    p.add_argument("--heads", type=int, help=helps["heads"])
    p.add_argument("--ffn", type=int, help=helps["ffn"])
    p.add_argument("--word-rank", type=int, help=helps["word_rank"])
    p.add_argument("--target-ratio", type=float, help=helps["target_ratio"])
    p.add_argument(
        "--target-metric",
        choices=["flops", "params"],
        default="flops",
        help=helps["target_metric"],
    )
    p.add_argument(
        "--importance",
        choices=["all-exits", "last-exit"],
        default="all-exits",
        help=helps["importance"],
    )
    p.add_argument("--global-ranking", action="store_true", help=helps["global_ranking"])
    p.add_argument(
        "--iterations", type=int, default=SlimConfig.iterations, help=helps["iterations"]
    )
    p.add_argument("--no-exits", action="store_true", help="static pruning: the last exit only")
    p.add_argument(
        "--gradient-equilibrium",
        action="store_true",
        help="scale gradients at each exit's branch point (Li et al. 2019)",
    )
    p.add_argument(
        "--exit-pooler",
        choices=["tanh", "dense"],
        default="tanh",
        help="each exit before its classifier: tanh (the paper) or Linear + tanh (BERT-like)",
    )
    p.add_argument(
        "--exit-pool",
        choices=["first", "mean"],
        default="first",
        help="what each exit reads: the first token (the paper) or the mean of the real tokens",
    )
    p.add_argument("--ta-steps", type=int, default=SlimConfig.ta_steps, help=helps["ta_steps"])
    p.add_argument(
        "--steps-per-iteration",
        type=int,
        default=SlimConfig.steps_per_iteration,
        help=helps["steps_per_iteration"],
    )
    p.add_argument(
        "--recovery-steps",
        type=int,
        default=SlimConfig.recovery_steps,
        help=helps["recovery_steps"],
    )
    p.add_argument("--batch-size", type=int, default=SlimConfig.batch_size)
    p.add_argument("--lr", type=float, default=SlimConfig.learning_rate)
    p.add_argument(
        "--exit-lr",
        type=float,
        default=SlimConfig.exit_learning_rate,
        help="learning rate of the exits (the backbone uses --lr)",
    )
    p.add_argument(
        "--hidden-weight",
        type=float,
        default=SlimConfig.hidden_weight,
        help="weight of the hidden-state MSE to the distillation target",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--keep-optimizer",
        action="store_true",
        help="keep each finished stage's optimizer state (deleted by default: only an "
        "unfinished stage needs it to resume)",
    )
    p.add_argument("--train-limit", type=int, help="first N training examples")
    p.add_argument("--dev-limit", type=int, help="sweep on the first N dev examples")
    p.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=DEFAULT_THRESHOLDS,
        help="entropy thresholds swept on dev (classification; patience 1..L-1 is swept too)",
    )
    p.add_argument(
        "--tolerances",
        type=float,
        nargs="+",
        default=list(REGRESSION_TOLERANCES),
        help="regression tasks: patience 1..L-1 swept at each tolerance (how far apart two "
        "successive exits' predictions may be and still agree, in label units)",
    )
    p.add_argument("--data-dir")
    p.add_argument("--json", help="also write the sweep to this file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_slim)


def config_from_args(args: argparse.Namespace) -> SlimConfig:
    return SlimConfig(
        heads=args.heads,
        ffn=args.ffn,
        word_rank=args.word_rank,
        target_ratio=args.target_ratio,
        target_metric=args.target_metric,
        global_ranking=args.global_ranking,
        importance=args.importance,
        iterations=args.iterations,
        exits=not args.no_exits,
        exit_pooler=args.exit_pooler,
        exit_pool=args.exit_pool,
        gradient_equilibrium=args.gradient_equilibrium,
        hidden_weight=args.hidden_weight,
        ta_steps=args.ta_steps,
        steps_per_iteration=args.steps_per_iteration,
        recovery_steps=args.recovery_steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        exit_learning_rate=args.exit_lr,
        seed=args.seed,
        keep_optimizer=args.keep_optimizer,
    )


def cmd_slim(args: argparse.Namespace) -> int:
    from .jobs import slim_job

    config = config_from_args(args)
    config.validate()
    out = slim_job(
        args.model,
        args.task,
        args.output,
        config,
        train_limit=args.train_limit,
        dev_limit=args.dev_limit,
        thresholds=args.thresholds,
        tolerances=args.tolerances,
        data_dir=args.data_dir,
        progress=not args.no_progress,
    )
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0
