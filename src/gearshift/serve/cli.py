"""``gearshift serve`` and ``gearshift gears build``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from gearshift.errors import ConfigError

logger = logging.getLogger("gearshift.serve")


def _serve_config(args: argparse.Namespace):
    from gearshift.serve.app import ServeConfig

    return ServeConfig(
        slo_ms=args.slo_ms,
        policy=args.policy,
        gear=args.gear,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue or max(256, 8 * args.max_batch),
        max_concurrent=args.max_concurrent,
        max_texts=args.max_texts,
        max_chars=args.max_chars,
        deadline_ms=args.deadline_ms,
        max_length=args.max_length,
    )


def single_gear_table(model: str, task_name: str | None = None):
    """A one-gear table for ``--model`` without ``--gears``: the model as it is, its
    latency measured on this machine at start (batch 1, 8, 32, a few repeats)."""
    from gearshift.data import get_task
    from gearshift.jobs import task_of_folder
    from gearshift.serve.build import measure_latency_ms, task_info
    from gearshift.serve.gears import GearSet, load_gear_model
    from gearshift.serve.table import Gear, GearTable, ModelEntry, TaskInfo

    name = task_name or task_of_folder(model)
    loaded = load_gear_model(model)
    if name:
        info = task_info(get_task(name))
    else:
        head = loaded.config.head
        if head.kind not in ("classification", "regression"):
            raise ConfigError(
                f"{model} has no classification or regression head: pass --task or --gears"
            )
        info = TaskInfo("custom", head.kind, False, head.label_names)
    table = GearTable(
        info, {"base": ModelEntry(model)}, [Gear("full", "base", {}, latency_ms={1: 1.0})]
    )
    gearset = GearSet(table, models={"base": loaded})
    texts = ["a short sentence to time the model with", "another one, a little longer than it"]
    table.gears[0].latency_ms = measure_latency_ms(gearset, table.gears[0], texts, repeats=3)
    return gearset


def cmd_serve(args: argparse.Namespace) -> int:
    from gearshift.serve.app import GearServer
    from gearshift.serve.gears import GearSet
    from gearshift.serve.table import read_gear_table

    config = _serve_config(args)
    config.validate()
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allow_remote:
        raise ConfigError(
            f"--host {args.host}: gearshift serve binds to loopback unless --allow-remote is given"
        )
    if args.engine == "ray":
        from gearshift.serve.ray_app import serve_with_ray

        if not args.gears:
            raise ConfigError("--engine ray reads the shared gear table: pass --gears G.json")
        serve_with_ray(args.gears, config, args.replicas, args.host, args.port)
        return 0
    if args.gears:
        gearset = GearSet(read_gear_table(args.gears), max_length=config.max_length)
    elif args.model:
        gearset = single_gear_table(args.model, args.task)
    else:
        raise ConfigError("pass --gears G.json (from `gearshift gears build`) or --model FOLDER")
    server = GearServer(gearset, config)
    run_uvicorn(server, args.host, args.port)
    return 0


def run_uvicorn(server, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM: uvicorn stops accepting, answers what is in flight, then
    the app's shutdown drains the batcher."""
    import uvicorn

    from gearshift.serve.app import create_app

    logging.getLogger("gearshift.serve").setLevel(logging.INFO)
    app = create_app(server)
    print(
        f"gearshift serve: http://{host}:{port}/ (gears: {', '.join(server.table.names)})",
        flush=True,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=60,
        # a backstop past gearshift's own 429s: connections beyond it get uvicorn's 503
        limit_concurrency=server.config.concurrency_limit + 64,
    )


def cmd_gears_build(args: argparse.Namespace) -> int:
    from gearshift.cli import _resolve_task
    from gearshift.serve.build import build_gear_table

    task = _resolve_task(args, args.model)
    table = build_gear_table(
        args.model,
        task,
        args.output,
        plugins=args.plugin or [],
        exits=args.exits or [],
        exit_thresholds=args.exit_thresholds,
        stacks=args.stack or [],
        folders=args.folder or [],
        dev_limit=args.dev_limit,
        sizes=tuple(args.batch_sizes),
        repeats=args.repeats,
        max_length=args.max_length,
        data_dir=args.data_dir,
        threads=args.threads,
    )
    rows = [
        {
            "gear": g.name,
            "score": g.score,
            **{f"ms@{b}": round(v, 2) for b, v in g.latency_ms.items()},
        }
        for g in table.gears
    ]
    print(json.dumps(rows, indent=1))
    print(f"gear table written to {Path(args.output)}")
    return 0


def add_parsers(sub) -> None:
    """Register ``serve`` and ``gears`` on the top-level subparsers."""
    from gearshift.cli import _add_task_args

    p = sub.add_parser("serve", help="serve a model over HTTP, shifting gears with the load")
    p.add_argument("--model", help="model folder to serve as one gear (without --gears)")
    p.add_argument("--task", help="the model's task (default: the one its folder records)")
    p.add_argument("--gears", help="gear table from `gearshift gears build`")
    p.add_argument("--slo-ms", type=float, default=100.0, help="latency objective per request")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback by default)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    p.add_argument(
        "--policy",
        default="adaptive",
        help="adaptive (default), fixed (with --gear), or package.module:Class",
    )
    p.add_argument("--gear", help="the gear of --policy fixed (or the adaptive start gear)")
    p.add_argument("--max-batch", type=int, default=32, help="texts per model call at most")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="wait this long to fill a batch")
    p.add_argument("--max-queue", type=int, help="texts queued before 429 (default 8 x max batch)")
    p.add_argument(
        "--max-concurrent", type=int, help="requests in flight before 429 (default 2 x queue)"
    )
    p.add_argument("--max-texts", type=int, default=64, help="texts per request")
    p.add_argument("--max-chars", type=int, default=10_000, help="characters per text")
    p.add_argument(
        "--deadline-ms", type=float, help="drop texts not run by then (default 10 x SLO)"
    )
    p.add_argument("--max-length", type=int, default=128, help="tokens per text (truncation)")
    p.add_argument(
        "--engine",
        choices=["uvicorn", "ray"],
        default="uvicorn",
        help="one uvicorn process, or Ray Serve replicas (the ray extra)",
    )
    p.add_argument("--replicas", type=int, default=2, help="Ray Serve replicas (--engine ray)")
    p.set_defaults(func=cmd_serve)

    g = sub.add_parser("gears", help="gear tables for `gearshift serve`")
    gsub = g.add_subparsers(dest="gears_command", required=True)
    b = gsub.add_parser("build", help="measure each gear's dev score and latency; write the table")
    b.add_argument("--model", required=True, help="the teacher (the 'full' gear)")
    _add_task_args(b)
    b.add_argument("--plugin", action="append", help="plugin folder (NAME=DIR or DIR), repeatable")
    b.add_argument("--exits", action="append", help="multi-exit folder (NAME=DIR or DIR)")
    b.add_argument(
        "--exit-thresholds",
        type=float,
        nargs="+",
        default=[0.1, 0.3],
        help="entropy thresholds: one gear each per --exits folder",
    )
    b.add_argument(
        "--stack", action="append", help="stack folder: one gear per operating point it lists"
    )
    b.add_argument("--folder", action="append", help="another model folder (int8, factorized...)")
    b.add_argument("--output", required=True, help="where to write the gear table (JSON)")
    b.add_argument("--dev-limit", type=int, help="score on the first N dev examples")
    b.add_argument(
        "--batch-sizes",
        type=int,
        nargs="+",
        default=[1, 8, 32],
        help="batch sizes whose latency the table records",
    )
    b.add_argument("--repeats", type=int, default=10, help="timed calls per gear and batch size")
    b.add_argument("--max-length", type=int, default=128, help="tokens per text (truncation)")
    b.add_argument("--threads", type=int, help="torch threads while timing")
    b.set_defaults(func=cmd_gears_build)
