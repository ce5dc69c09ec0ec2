"""``gearshift stack``: build one stack folder from a model, model edits and plan providers."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "stack",
        help="stack methods on one model (edits, then plugins / exits / steps) into one folder",
        description=(
            "Build a stack: the model's edits in order (--factorize, then --int8), then plan "
            "providers (--plugin, --exits, --steps). The folder loads with gearshift.load, "
            "`gearshift evaluate --model S`, `gearshift profile --model S` and `gearshift "
            "serve --model S`; its operating points are chosen per call (docs/compose.md)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="the base: a model folder (a teacher, a factorized or slim model, a stack whose "
        "providers are kept), a checkpoint or an alias",
    )
    p.add_argument("--output", required=True, help="the stack folder to write")
    p.add_argument("--task", help="for calibration data (default: the task --model records)")
    p.add_argument(
        "--factorize",
        metavar="METHOD:RATIO",
        help="compress the base first, no fine-tuning (e.g. svdllm:2, fwsvd:2, svd:4)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="dynamic int8 quantization of every Linear (after --factorize: the factors)",
    )
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="a trained plugin folder (repeat for several; switch between them per call)",
    )
    p.add_argument(
        "--exits",
        metavar="DIR",
        help="exit heads: an exits folder, a slim multi-exit model or a stack with exits",
    )
    p.add_argument(
        "--steps",
        nargs="+",
        default=[],
        metavar="N[:SOLVER]",
        help="step settings a parameter-shared base offers (e.g. 6 3 2 or 3:heun)",
    )
    p.add_argument(
        "--default",
        nargs="+",
        default=[],
        metavar="PROVIDER=VALUE",
        help="the setting used when a call names none (e.g. plugins=k4-ffn exits=entropy:0.3)",
    )
    p.add_argument(
        "--link-base",
        action="store_true",
        help="name the base folder (with its checksums) instead of copying it; only without edits",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.set_defaults(func=cmd_stack)


def cmd_stack(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gearshift.compose.build import StackRecipe, build_stack, parse_default
    from gearshift.compose.flops import stack_flops
    from gearshift.data.recorded import resolve_task
    from gearshift.errors import ConfigError

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise ConfigError(
            f"--output {out} exists already: pass --overwrite to replace it, or choose another"
        )
    task = None
    if args.factorize:
        task = resolve_task(args.model, args.task, required=False)
    recipe = StackRecipe(
        model=args.model,
        factorize=args.factorize,
        int8=args.int8,
        plugins=list(args.plugin),
        exits=args.exits,
        steps=list(args.steps),
        default=parse_default(args.default),
    )
    stack = build_stack(recipe, out, task=task, link_base=args.link_base)
    settings = stack.settings()
    n = 128
    summary = {
        "stack": str(out),
        "parts": recipe.describe(),
        "providers": list(stack.providers),
        "default_setting": stack.describe(stack.default_setting),
        "operating_points": {
            name: {"gflops_at_128_tokens": round(stack_flops(stack, n, s) / 1e9, 4)}
            for name, s in settings.items()
        },
    }
    print(json.dumps(summary, indent=2))
    return 0
