"""``gearshift share`` (make + distil a shared model) and ``gearshift steps`` (eval, finetune,
decoder); wired in with :func:`add_cli`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .model import SOLVERS
from .share import INITS


def _train_args(p: argparse.ArgumentParser, lr: float, steps: int, batch: int = 32) -> None:
    p.add_argument("--max-steps", type=int, default=steps, help="optimizer steps")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--warmup-ratio", type=float, default=0.06)
    p.add_argument("--save-every", type=int, default=200, help="steps between checkpoints")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--train-limit", type=int, help="use the first N training texts/examples")
    p.add_argument("--data-dir")
    p.add_argument(
        "--resume", action="store_true", help="continue from OUTPUT/checkpoint after a stop"
    )
    p.add_argument(
        "--keep-optimizer",
        action="store_true",
        help="keep the optimizer state in OUTPUT/checkpoint when training ends",
    )
    p.add_argument("--no-progress", action="store_true")


def _sizes(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--step-sizes",
        type=float,
        nargs="+",
        default=[1.0],
        help=f"step-aware {what}: each batch runs at a step size drawn from these "
        "(e.g. 1 1.5 2 3); the default 1 is naive training",
    )
    p.add_argument(
        "--per-group-steps",
        action="store_true",
        help="each group of shared layers draws its own step size, so mixed plans (two "
        "groups of three layers at N = 3: steps 1.5, 1.5, 3) are trained too",
    )


def _config(args: argparse.Namespace, **kw: Any):
    from gearshift.train import TrainConfig

    return TrainConfig(
        output_dir=str(args.output),
        max_steps=args.max_steps,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        warmup_ratio=args.warmup_ratio,
        save_every=args.save_every,
        seed=args.seed,
        progress=not args.no_progress,
        keep_optimizer=args.keep_optimizer,
        **kw,
    )


def add_cli(subparsers: Any) -> None:
    """Add ``share`` and ``steps`` to the ``gearshift`` parser."""
    p = subparsers.add_parser(
        "share",
        help="make a parameter-shared model from an unshared one and distil it on raw text",
    )
    p.add_argument("--model", default="minilm-l6", help="the unshared source (and teacher)")
    p.add_argument("--output", required=True, type=Path, help="OUTPUT/model is the result")
    p.add_argument(
        "--groups",
        type=int,
        default=1,
        help="shared groups of consecutive layers (1 = fully shared)",
    )
    p.add_argument(
        "--init", choices=INITS, default="mean", help="shared block from its layers' mean or one"
    )
    p.add_argument(
        "--layer-norms",
        action="store_true",
        help="each layer keeps its own LayerNorms (copied from the source); only attention "
        "and FFN weights are shared. Recommended for post-LN models such as BERT: one shared "
        "norm cannot give every layer its own output scale (docs/steps.md)",
    )
    _sizes(p, "distillation")
    p.add_argument(
        "--layerwise",
        action="store_true",
        help="also match the teacher at every layer a step lands on",
    )
    p.add_argument("--text", default="wikitext2", help="'wikitext2' or a .txt file")
    p.add_argument("--task", help="add this task's training sentences (labels unused)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument(
        "--eval-texts",
        type=int,
        default=0,
        help="held-out WikiText-2 test passages: log the student's fidelity to the teacher "
        "(cosine and MSE of the final states at a = 1 and 2) to OUTPUT/log.jsonl",
    )
    p.add_argument("--eval-every", type=int, default=100, help="steps between those checks")
    _train_args(p, lr=1e-4, steps=2000)
    p.set_defaults(func=cmd_share)

    s = subparsers.add_parser("steps", help="run shared models in fewer, larger steps")
    sub = s.add_subparsers(dest="steps_command", required=True)
    e = sub.add_parser("eval", help="score a model at several numbers of steps")
    e.add_argument("--model", required=True)
    e.add_argument("--task", help="default: the task recorded in --model (LM: WikiText-2 test)")
    e.add_argument("--steps", type=int, nargs="+", required=True, help="e.g. 6 4 3 2")
    e.add_argument(
        "--solver",
        nargs="+",
        choices=SOLVERS,
        default=["euler"],
        help="update rule of each step (each solver is scored at every --steps)",
    )
    e.add_argument("--limit", type=int, help="first N dev examples (LM: blocks)")
    e.add_argument("--data-dir")
    e.add_argument("--json", help="also write the rows to this file")
    e.set_defaults(func=cmd_eval)

    f = sub.add_parser("finetune", help="fine-tune a (shared) model, optionally step-aware")
    f.add_argument("--model", required=True)
    f.add_argument("--task", required=True)
    f.add_argument("--output", required=True, type=Path)
    f.add_argument("--epochs", type=float, default=3.0)
    f.add_argument("--dev-limit", type=int)
    _sizes(f, "fine-tuning")
    _train_args(f, lr=1e-4, steps=0)
    f.set_defaults(func=cmd_finetune)

    d = sub.add_parser(
        "decoder", help="pre-train a small GPT-2-style decoder from scratch on WikiText-2"
    )
    d.add_argument("--output", required=True, type=Path)
    d.add_argument("--groups", type=int, help="shared groups (default: unshared)")
    d.add_argument(
        "--tokenizer",
        help="a model whose tokenizer to use (default: train an 8k byte-level BPE on the text)",
    )
    d.add_argument("--block-size", type=int, default=128, help="tokens per training sequence")
    _sizes(d, "pre-training")
    _train_args(d, lr=1e-3, steps=2000, batch=16)
    d.set_defaults(func=cmd_decoder)


def cmd_share(args: argparse.Namespace) -> int:
    from .jobs import share_model

    if args.eval_texts < 0 or args.eval_every < 1:
        raise SystemExit(
            f"--eval-texts {args.eval_texts} / --eval-every {args.eval_every}: give a count of "
            "0 or more passages and a positive number of steps"
        )
    config = _config(args, eval_every=args.eval_every) if args.max_steps else None
    out = share_model(
        args.model,
        args.output,
        groups=args.groups,
        init=args.init,
        layer_norms=args.layer_norms,
        step_sizes=args.step_sizes,
        layerwise=args.layerwise,
        text=args.text,
        task=args.task,
        train_limit=args.train_limit,
        max_length=args.max_length,
        train_config=config,
        resume=args.resume,
        data_dir=args.data_dir,
        eval_texts=args.eval_texts,
        per_group_steps=args.per_group_steps,
    )
    print(json.dumps({"model": str(out)}))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .jobs import evaluate_steps

    rows = evaluate_steps(args.model, args.steps, args.solver, args.task, args.limit, args.data_dir)
    text = json.dumps(rows, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .jobs import finetune_steps

    res = finetune_steps(
        args.model,
        args.task,
        args.output,
        args.step_sizes,
        _config(args, epochs=args.epochs),
        args.train_limit,
        args.dev_limit,
        args.resume,
        per_group_steps=args.per_group_steps,
    )
    print(json.dumps({"model": str(res.model_dir), res.metric: res.score}))
    return 0


def cmd_decoder(args: argparse.Namespace) -> int:
    from .jobs import pretrain_decoder

    out = pretrain_decoder(
        args.output,
        args.tokenizer,
        args.groups,
        args.step_sizes,
        args.block_size,
        args.train_limit,
        _config(args),
        resume=args.resume,
        data_dir=args.data_dir,
        per_group_steps=args.per_group_steps,
    )
    print(json.dumps({"model": str(out)}))
    return 0
