"""``gearshift plugin train`` and ``gearshift plugin eval``; wired in with :func:`add_cli`."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from gearshift.errors import ConfigError

from .config import PluginConfig

logger = logging.getLogger("gearshift.plugins")
HELP = PluginConfig.help()


def parse_layers(value: str) -> list[int] | None:
    """``"all"`` -> None; ``"0,2,4"`` -> [0, 2, 4]."""
    if value.strip().lower() == "all":
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--layers takes 'all' or comma-separated indices, got {value!r}"
        ) from exc


def add_cli(subparsers: Any) -> None:
    """Add the ``plugin`` command (``train``, ``eval``) to the ``gearshift`` parser."""
    p = subparsers.add_parser("plugin", help="train, evaluate and compare compression plugins")
    sub = p.add_subparsers(dest="plugin_command", required=True)

    t = sub.add_parser(
        "train", help="train a plugin on a frozen model (stage A: raw text; C: a teacher)"
    )
    t.add_argument(
        "--model",
        default="minilm-l6",
        help="the frozen base: a fine-tuned teacher folder (stage C) or a pre-trained model such as minilm-l6 (stage A)",
    )
    t.add_argument(
        "--stage",
        choices=["A", "C"],
        default="C",
        help="A: pre-train on raw text against the pre-trained model; C: adapt to a task against its teacher",
    )
    t.add_argument(
        "--task",
        help="stage C: the teacher's task (default: the one recorded in --model); stage A: add its sentences",
    )
    t.add_argument(
        "--text",
        default=None,
        help="stage A text: 'wikitext2' (default for stage A) or a .txt file, one passage per line",
    )
    t.add_argument(
        "--output", required=True, help="output folder: OUTPUT/plugin is the trained plugin"
    )
    t.add_argument("--k", type=int, default=4, help=HELP["k"])
    t.add_argument("--placement", choices=["ffn", "layer"], default="ffn", help=HELP["placement"])
    t.add_argument(
        "--layers", type=parse_layers, default=None, help="'all' or e.g. 0,1,2 (default: all)"
    )
    t.add_argument(
        "--bottleneck", type=int, default=PluginConfig.bottleneck, help=HELP["bottleneck"]
    )
    t.add_argument("--keep-first-token", action="store_true", help=HELP["keep_first_token"])
    t.add_argument(
        "--no-layer-residual",
        action="store_true",
        help="placement 'layer': restore the merged output itself",
    )
    t.add_argument(
        "--init",
        help="start from this plugin folder (e.g. a stage-A plugin) instead of fresh weights",
    )
    t.add_argument(
        "--kl",
        action="store_true",
        help="stage C: add KL to the teacher's logits to the hidden-state MSE",
    )
    t.add_argument(
        "--kl-weight",
        type=float,
        default=1.0,
        help="with --kl: weight of KL(teacher || student) on the logits (MSE for regression)",
    )
    t.add_argument(
        "--layerwise", action="store_true", help="MSE on every layer's output, not only the last"
    )
    t.add_argument(
        "--cache-targets",
        action="store_true",
        help="keep the teacher's outputs per example in memory (about 1.5 kB per token at "
        "hidden size 384) so that epochs after the first skip the teacher's pass; not with "
        "--layerwise",
    )
    t.add_argument("--epochs", type=float, default=1.0)
    t.add_argument("--max-steps", type=int, default=0, help="optimizer steps (0: use --epochs)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--warmup-ratio", type=float, default=0.06)
    t.add_argument("--max-length", type=int, default=128)
    t.add_argument(
        "--train-limit", type=int, help="use the first N training examples (or texts per source)"
    )
    t.add_argument("--dev-limit", type=int, help="stage C: score on the first N dev examples")
    t.add_argument(
        "--eval-every",
        type=int,
        default=0,
        help="stage C: score on dev every N steps and keep the best in OUTPUT/best (0: only at the end)",
    )
    t.add_argument(
        "--save-every", type=int, default=200, help="steps between resumable checkpoints"
    )
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--data-dir")
    t.add_argument(
        "--keep-optimizer",
        action="store_true",
        help="keep the optimizer state in OUTPUT/checkpoint when training ends",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT/checkpoint after an interruption",
    )
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="score a model with each of several plugins (and without)")
    e.add_argument("--model", required=True, help="the base model (teacher folder)")
    e.add_argument("--plugin", nargs="+", required=True, help="plugin folders")
    e.add_argument("--task", help="default: the task recorded in --model")
    e.add_argument("--split", default="dev")
    e.add_argument("--limit", type=int)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--max-length", type=int, default=128)
    e.add_argument("--data-dir")
    e.add_argument("--json", help="also write the results to this file")
    e.set_defaults(func=cmd_eval)


def _task(name: str | None, model: str):
    from gearshift.data.recorded import resolve_task

    return resolve_task(model, name)  # --task, else the task the model records


def cmd_train(args: argparse.Namespace) -> int:
    from gearshift.data.raw import raw_texts, text_features
    from gearshift.data.recorded import model_for_task, task_of_folder
    from gearshift.data.taskdata import TaskData
    from gearshift.measure.evaluate import evaluate
    from gearshift.runtime import load_pretrained, load_tokenizer
    from gearshift.train import TrainConfig

    from .model import Plugin, load_plugin
    from .train import TargetCache, train_plugin

    task = None
    if args.stage == "C":
        task = _task(args.task, args.model)
        base, tok = model_for_task(args.model, task)
        if task_of_folder(args.model) != task.name:
            logger.warning(
                "stage C on %s, which is not a %s teacher: its task head is untrained",
                args.model,
                task.name,
            )
        train = TaskData.load(task, tok, "train", args.train_limit, args.max_length, args.data_dir)
        features, collate = train.features, train.collator
    else:
        if args.kl:
            raise ConfigError("--kl needs a teacher's logits: use it with --stage C")
        base, tok = load_pretrained(args.model), load_tokenizer(args.model)
        texts = raw_texts(args.text or "wikitext2", args.task, args.train_limit, args.data_dir)
        features, collate = text_features(tok, texts, args.max_length)

    if args.init:
        plugin = load_plugin(args.init, base)
    else:
        config = PluginConfig(
            k=args.k,
            placement=args.placement,
            layers=args.layers,
            bottleneck=args.bottleneck,
            keep_first_token=args.keep_first_token,
            layer_residual=not args.no_layer_residual,
        )
        plugin = Plugin(config, base)
    eval_fn = None
    metric = None
    if task is not None:
        dev = TaskData.load(task, tok, "dev", args.dev_limit, args.max_length, args.data_dir)
        metric = task.main_metric

        def eval_fn(p):
            return evaluate(base, dev, plan=p.plan())

    cfg = TrainConfig(
        output_dir=args.output,
        learning_rate=args.lr,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        warmup_ratio=args.warmup_ratio,
        seed=args.seed,
        eval_every=args.eval_every,
        save_every=args.save_every,
        metric_for_best=metric if args.eval_every else None,
        greater_is_better=task.greater_is_better if task else True,
        progress=not args.no_progress,
        keep_optimizer=args.keep_optimizer,
    )
    extra = {
        "training": {
            "stage": args.stage,
            "model": args.model,
            "task": task.name if task else None,
            "text": args.text if args.stage == "A" else None,
            "init": args.init,
        }
    }
    res = train_plugin(
        base,
        plugin,
        features,
        collate,
        cfg,
        kl_weight=args.kl_weight if args.kl else 0.0,
        layerwise=args.layerwise,
        eval_fn=eval_fn,
        cache=TargetCache() if args.cache_targets else None,
        resume=args.resume,
        extra=extra,
    )
    print(f"plugin {plugin.config.name} ({plugin.num_parameters():,} parameters): {res.plugin_dir}")
    if res.best_dir:
        print(f"best on dev: {res.best_dir}")
    evals = [r for r in res.history if r.get("kind") == "eval"]
    if evals and metric in evals[-1]:
        print(
            f"dev {metric} with the plugin: {evals[-1][metric]:.2f} (teacher alone: "
            f"{evaluate(base, dev)[metric]:.2f})"
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from gearshift.data.recorded import model_for_task
    from gearshift.data.taskdata import TaskData
    from gearshift.measure import flops_at_length
    from gearshift.measure.evaluate import evaluate

    from .model import PluginModel

    task = _task(args.task, args.model)
    base, tok = model_for_task(args.model, task)
    data = TaskData.load(task, tok, args.split, args.limit, args.max_length, args.data_dir)
    model = PluginModel(base)
    for i, folder in enumerate(args.plugin):
        model.load_plugin(f"p{i}", folder)
    rows = []
    full_flops = flops_at_length(base, 128)
    for i, name in enumerate([None, *model.plugin_names]):
        with model.plugin(name):
            metrics = evaluate(model, data, batch_size=args.batch_size)
            flops = flops_at_length(model, 128)
        rows.append(
            {
                "plugin": args.plugin[i - 1] if name else None,
                "setting": model.plugins[name].config.name if name else "none",
                "score": metrics[task.main_metric],
                "metrics": metrics,
                "flops_128": flops,
                "flops_saved_128": 1.0 - flops / full_flops,
            }
        )
    print(f"| plugin | setting | {task.main_metric} | FLOPs saved at 128 |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['plugin'] or '-'} | {r['setting']} | {r['score']:.2f} | {100 * r['flops_saved_128']:.1f}% |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"task": task.name, "model": args.model, "rows": rows}, indent=2) + "\n"
        )
    return 0
