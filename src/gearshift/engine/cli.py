"""The engine's verbs (``gearshift export``, ``gearshift tune``) and the ``--engine`` option
of evaluate / predict / profile."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gearshift.errors import ConfigError


def apply_engine(model: Any, args: argparse.Namespace) -> Any:
    """``model`` on the engine ``args.engine`` names (the model itself for eager), keeping
    its ``.tokenizer`` and ``.config``."""
    name = getattr(args, "engine", "eager") or "eager"
    if name == "eager":
        return model
    from gearshift.engine import build

    run = build(model, name, threads=getattr(args, "threads", None))
    run.tokenizer = getattr(model, "tokenizer", None)
    return run


def engine_latency(model: Any, name: str, task: Any, args: argparse.Namespace) -> dict:
    """Latency of ``model`` on engine ``name`` against eager, interleaved in one run, on
    batches of 1 and 32 real dev sentences: ``{"engine", "ratio_b1", "ratio_b32", ...}``."""
    from gearshift.data.taskdata import dev_texts
    from gearshift.engine import build
    from gearshift.measure.latency import compare_latency, make_batch

    threads = getattr(args, "threads", None)
    run = build(model, name, threads=threads)
    eager = build(model, "eager", threads=threads)
    texts = dev_texts(task, getattr(args, "limit", 256), getattr(args, "data_dir", None))
    out: dict[str, Any] = {"engine": name, "threads": threads}
    for size in (1, 32):
        batch = make_batch(model.tokenizer, texts, size)
        cmp = compare_latency(
            {"eager": lambda b: eager(**b), name: lambda b: run(**b)}, batch, threads=threads
        )
        out[f"ratio_b{size}"] = cmp.ratios[name]
        out[f"median_ms_b{size}"] = cmp.stats[name].median_ms
    return out


def parse_setting(items: list[str] | None) -> dict[str, Any]:
    """``["plugins=k4", "exits=0.3"]`` -> ``{"plugins": "k4", "exits": 0.3}`` (numbers
    parsed, ``none`` -> None)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--setting {item!r}: write PROVIDER=VALUE, e.g. plugins=k4")
        if value.lower() in ("none", "off", ""):
            out[key] = None
            continue
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_export(args: argparse.Namespace) -> int:
    from gearshift.api import load
    from gearshift.engine.export import export_hf_folder, export_onnx_folder

    model = load(args.model)
    tok = getattr(model, "tokenizer", None)
    if args.format == "hf":
        if args.setting or args.int8:
            raise ConfigError(
                "--setting and --int8 apply to --format onnx; a Hugging Face folder holds the "
                "plain fp32 model"
            )
        path = export_hf_folder(model, args.output, tokenizer=tok)
    else:
        path = export_onnx_folder(
            model,
            args.output,
            tokenizer=tok,
            setting=parse_setting(args.setting),
            int8=args.int8,
            opset=args.opset,
            max_length=args.max_length,
            source=args.model,
        )
    if tok is None:
        print("note: the model has no tokenizer; none was written", file=sys.stderr)
    print(f"{args.format} export written to {path}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from gearshift.engine.tune import run_tune

    return run_tune(args)


def add_cli(sub) -> None:
    """Register ``export`` and ``tune``."""
    p = sub.add_parser(
        "export",
        help="write a model as an ONNX folder or a Hugging Face checkpoint folder",
        description="ONNX: anything the onnx engine runs (a stack at one --setting), checked "
        "against eager. HF: config.json + model.safetensors that transformers' Auto classes "
        "load, where the structure is one HF can hold (otherwise the error says why).",
    )
    p.add_argument("--model", required=True, help="model or stack folder (gearshift.load)")
    p.add_argument("--format", choices=["onnx", "hf"], required=True, help="what to write")
    p.add_argument("--output", required=True, help="the folder to write (atomically)")
    p.add_argument("--int8", action="store_true", help="onnx: ONNX Runtime dynamic int8")
    p.add_argument("--opset", type=int, default=17, help="onnx: the ONNX opset")
    p.add_argument(
        "--max-length",
        type=int,
        default=128,
        help="onnx: longest input a graph fixed to one length is written for",
    )
    p.add_argument(
        "--setting",
        action="append",
        metavar="PROVIDER=VALUE",
        help="onnx, stacks: the operating point to export (e.g. plugins=k4); repeatable",
    )
    p.set_defaults(func=cmd_export)

    from gearshift.engine.tune import add_tune_parser

    add_tune_parser(sub, cmd_tune)
