"""``gearshift tune``: measure candidate operating points on dev, keep the best under a budget.

Candidates are a model's cheaper forms on each engine: the teacher itself on ONNX Runtime
(fp32, int8), torch int8 of it, factorized forms (SVD at a few ratios) on every engine, and
the stacks a compose stack folder offers (each named setting; exit settings run on
ONNX Runtime as per-layer segments). Each is measured on
the task's dev split: the score, the latency ratio against the teacher on eager at batch 1
and 32 (the two timed interleaved in one run, on real dev sentences, fixed threads), the
analytic FLOPs ratio at 128 tokens, and the size on disk of what would be shipped.

The rule that picks the best point (documented, and what the test checks): among the
candidates inside *every* budget, the highest dev score; ties go to the lower batch-1
latency ratio. Budgets: ``latency=R`` (both latency ratios <= R), ``flops=R`` (FLOPs ratio
<= R), ``size=R`` (size-on-disk ratio <= R), ``drop=P`` (at most P points below the teacher).

Everything is cached under ``--output``: ``candidates/NAME/`` holds the candidate's
artifact and its measured ``row.json``; a second run (or one after an interruption)
measures only the candidates without a row. ``frontier.json`` and ``frontier.png`` hold all
rows and the plot, ``best/`` the chosen point as a ready folder (a gearshift model folder
for eager candidates, an ONNX folder for ONNX ones) with ``tune.json`` naming it.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from gearshift.errors import ConfigError, GearshiftError

logger = logging.getLogger("gearshift.tune")

BUDGET_KEYS = ("latency", "flops", "size", "drop")
ROW_FILE = "row.json"


# ---------------------------------------------------------------------- budgets and choice
def parse_budgets(items: Sequence[str]) -> dict[str, float]:
    """``["latency=0.5", "drop=1"]`` -> ``{"latency": 0.5, "drop": 1.0}``; ConfigError names
    a malformed or unknown budget."""
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in BUDGET_KEYS:
            raise ConfigError(
                f"--budget {item!r}: write KEY=VALUE with KEY one of {', '.join(BUDGET_KEYS)} "
                "(e.g. latency=0.5: at most half the teacher's latency)"
            )
        try:
            out[key] = float(value)
        except ValueError:
            raise ConfigError(f"--budget {item!r}: {value!r} is not a number") from None
        if out[key] < 0:
            raise ConfigError(f"--budget {item!r} must not be negative")
    if not out:
        raise ConfigError("give at least one --budget, e.g. --budget latency=0.5")
    return out


def within(row: Mapping[str, Any], budgets: Mapping[str, float]) -> bool:
    """Whether ``row`` is inside every budget."""
    checks = {
        "latency": lambda v: max(row["latency_ratio_b1"], row["latency_ratio_b32"]) <= v,
        "flops": lambda v: row["flops_ratio"] <= v,
        "size": lambda v: row["size_ratio"] <= v,
        "drop": lambda v: row["reference_score"] - row["score"] <= v,
    }
    return all(checks[k](v) for k, v in budgets.items())


def select_best(rows: Sequence[Mapping[str, Any]], budgets: Mapping[str, float]) -> dict | None:
    """The best row under ``budgets``: the highest score, ties to the lower batch-1 latency
    ratio; None when no row fits."""
    fits = [r for r in rows if within(r, budgets)]
    if not fits:
        return None
    return dict(max(fits, key=lambda r: (r["score"], -r["latency_ratio_b1"])))


def frontier(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The rows no other row beats on both score and batch-1 latency ratio, fastest first."""
    out = []
    for r in rows:
        dominated = any(
            o["score"] >= r["score"]
            and o["latency_ratio_b1"] <= r["latency_ratio_b1"]
            and (o["score"] > r["score"] or o["latency_ratio_b1"] < r["latency_ratio_b1"])
            for o in rows
        )
        if not dominated:
            out.append(dict(r))
    return sorted(out, key=lambda r: r["latency_ratio_b1"])


# ---------------------------------------------------------------------- candidates
@dataclass
class Candidate:
    """One operating point: a model form (``make`` builds it from the teacher) on an engine."""

    name: str
    method: str
    setting: str
    engine: str
    make: Callable[[nn.Module], nn.Module]
    stack_setting: dict[str, Any] = field(default_factory=dict)


def _same(model: nn.Module) -> nn.Module:
    return model


def _torch_int8(model: nn.Module) -> nn.Module:
    from gearshift.runtime.edits import quantize_int8

    return quantize_int8(copy.deepcopy(model))


def _svd(ratio: float) -> Callable[[nn.Module], nn.Module]:
    def make(model: nn.Module) -> nn.Module:
        from gearshift.methods.factorize.compress import compress
        from gearshift.methods.factorize.config import FactorizeConfig

        edited, _ = compress(copy.deepcopy(model), FactorizeConfig(method="svd", ratio=ratio))
        return edited.eval()

    return make


def candidates(
    model: nn.Module, engines: Sequence[str], ratios: Sequence[float]
) -> list[Candidate]:
    """The candidates tune measures for ``model`` (a plain model or a stack): the teacher on
    each non-eager engine, torch int8, SVD at each ratio on each engine, a stack's named
    settings on each engine."""
    out = []
    for e in engines:
        if e != "eager":
            method = {"onnx": "ort-fp32", "onnx-int8": "ort-int8"}.get(e, "teacher")
            out.append(Candidate(f"teacher-{e}", method, "fp32", e, _same))
    out.append(Candidate("torch-int8", "torch-int8", "int8", "eager", _torch_int8))
    is_stack = hasattr(model, "base") and hasattr(model, "settings")
    if not is_stack:
        for r in ratios:
            for e in engines:
                out.append(
                    Candidate(f"svd-r{r:g}-{e}", "factorize-svd", f"ratio={r:g}", e, _svd(r))
                )
    else:
        for label, setting in model.settings().items():
            if not any(v is not None for v in setting.values()):
                continue  # the base alone: the teacher rows
            for e in engines:  # exits run on onnx as per-layer segments
                out.append(Candidate(f"stack-{label}-{e}", "stack", label, e, _same, setting))
    return out


# ---------------------------------------------------------------------- measuring
def _size_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.suffix in (".safetensors", ".onnx"))


def _save_artifact(model, cand: Candidate, folder: Path, tokenizer) -> Path:
    """Write what would be shipped for ``cand`` into ``folder`` (atomically)."""
    if cand.engine.startswith("onnx"):
        from gearshift.engine.export import export_onnx_folder

        return export_onnx_folder(
            model,
            folder,
            tokenizer=tokenizer,
            setting=cand.stack_setting,
            int8=cand.engine == "onnx-int8",
        )
    if cand.method == "stack":
        from gearshift.compose.io import save_stack

        return save_stack(model, folder, tokenizer=tokenizer)
    from gearshift.runtime import save_model

    return save_model(model, folder, tokenizer=tokenizer)


@dataclass
class TuneContext:
    teacher: nn.Module
    tokenizer: Any
    data: Any
    texts: list
    threads: int | None
    warmup: int
    repeats: int
    batch_size: int = 32
    reference: dict = field(default_factory=dict)


def _score(run, ctx: TuneContext) -> float:
    from gearshift.measure.evaluate import evaluate

    metrics = evaluate(run, ctx.data, batch_size=ctx.batch_size)
    return float(metrics[ctx.data.task.main_metric])


def _latency(run, ctx: TuneContext, reference_run) -> dict[str, float]:
    from gearshift.measure.latency import compare_latency, make_batch

    out = {}
    for size in (1, 32):
        batch = make_batch(ctx.tokenizer, ctx.texts, size)
        cmp = compare_latency(
            {"teacher": lambda b: reference_run(**b), "candidate": lambda b: run(**b)},
            batch,
            warmup=ctx.warmup,
            repeats=ctx.repeats,
            threads=ctx.threads,
        )
        out[f"latency_ratio_b{size}"] = cmp.ratios["candidate"]
        out[f"median_ms_b{size}"] = cmp.stats["candidate"].median_ms
    return out


def _flops(model: nn.Module, setting: Mapping[str, Any] | None = None) -> int:
    """Analytic FLOPs of one 128-token example (a stack: at ``setting``, exits off)."""
    from gearshift.measure.flops import analytic_flops

    if hasattr(model, "base"):
        from gearshift.compose.flops import stack_flops

        return int(stack_flops(model, 128, dict(setting or {})))
    return int(analytic_flops(model.config, 128))


def measure(cand: Candidate, ctx: TuneContext, folder: Path) -> dict[str, Any]:
    """Build, save and measure ``cand``; returns its row (also written to folder/row.json)."""
    from gearshift.atomic import write_json_atomic
    from gearshift.engine import build
    from gearshift.engine.segments import exits_only

    model = cand.make(ctx.teacher)
    if cand.engine.startswith("onnx") and exits_only(model, cand.stack_setting):
        artifact = folder / "artifact"  # the per-layer graphs are what ships
        run = build(
            model, cand.engine, threads=ctx.threads, setting=cand.stack_setting, folder=artifact
        )
        size = run.size_on_disk()
        ctx.tokenizer.save_pretrained(str(artifact))
        (artifact / "gearshift.json").write_text(
            json.dumps({"kind": "onnx-segments", "setting": cand.setting}, indent=2)
        )
    else:
        artifact = _save_artifact(model, cand, folder / "artifact", ctx.tokenizer)
        size = _size_on_disk(artifact)
        run = build(model, cand.engine, threads=ctx.threads, setting=cand.stack_setting)
    reference_run = build(ctx.teacher, "eager", threads=ctx.threads)
    ref = ctx.reference
    row = {
        "name": cand.name,
        "method": cand.method,
        "setting": cand.setting,
        "engine": cand.engine,
        "score": _score(run, ctx),
        "reference_score": ref["score"],
        **_latency(run, ctx, reference_run),
        "flops": _flops(model, cand.stack_setting),
        "size_on_disk": size,
        "threads": ctx.threads,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    row["flops_ratio"] = row["flops"] / ref["flops"]
    row["size_ratio"] = row["size_on_disk"] / ref["size_on_disk"]
    write_json_atomic(folder / ROW_FILE, row)
    return row


# ---------------------------------------------------------------------- the verb
def plot_frontier(rows: list[dict], best: dict | None, path: Path, title: str) -> Path:
    """Score against batch-1 latency ratio, one colour per engine, the frontier dashed and
    ``best`` circled; written to ``path`` (PNG, atomically). Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for engine in sorted({r["engine"] for r in rows}):
        pts = [r for r in rows if r["engine"] == engine]
        ax.scatter([r["latency_ratio_b1"] for r in pts], [r["score"] for r in pts], label=engine)
    front = frontier(rows)
    ax.plot([r["latency_ratio_b1"] for r in front], [r["score"] for r in front], "k--", lw=0.8)
    if best is not None:
        ax.scatter(
            [best["latency_ratio_b1"]], [best["score"]], s=160, facecolors="none", edgecolors="r"
        )
    ax.set_xlabel("latency ratio vs teacher (batch 1)")
    ax.set_ylabel("dev score")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def table(rows: Sequence[Mapping[str, Any]], best: Mapping[str, Any] | None) -> str:
    """The rows as a Markdown table, best marked with *."""
    head = "| | candidate | engine | score | lat b1 | lat b32 | flops | size |\n|---|---|---|---|---|---|---|---|"
    lines = [head]
    for r in sorted(rows, key=lambda r: r["latency_ratio_b1"]):
        mark = "*" if best is not None and r["name"] == best["name"] else ""
        lines.append(
            f"| {mark} | {r['name']} | {r['engine']} | {r['score']:.2f} | "
            f"{r['latency_ratio_b1']:.2f} | {r['latency_ratio_b32']:.2f} | "
            f"{r['flops_ratio']:.2f} | {r['size_ratio']:.2f} |"
        )
    return "\n".join(lines)


def tune(
    model_path: str,
    task_name: str,
    output: str | Path,
    budgets: Mapping[str, float],
    *,
    engines: Sequence[str] = ("eager", "onnx", "onnx-int8"),
    ratios: Sequence[float] = (2.0, 4.0),
    limit: int | None = None,
    threads: int | None = 1,
    warmup: int = 5,
    repeats: int = 30,
    data_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure the candidates of ``model_path`` on ``task_name``'s dev split (cached and
    resumable under ``output``), write frontier.json / frontier.png and ``best/``; returns
    ``{"rows", "best", "frontier", "best_folder"}``. GearshiftError when no candidate fits
    (the rows are written first)."""
    from tqdm.auto import tqdm

    from gearshift.api import load
    from gearshift.atomic import write_json_atomic
    from gearshift.data import get_task
    from gearshift.data.taskdata import TaskData, dev_texts

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    task = get_task(task_name)
    teacher = load(model_path)
    tok = teacher.tokenizer
    if tok is None:
        raise ConfigError(f"{model_path} has no tokenizer: tune measures on real dev sentences")
    data = TaskData.load(task, tok, "dev", limit, 128, data_dir)
    texts = dev_texts(task, limit, data_dir)
    ctx = TuneContext(teacher, tok, data, texts, threads, warmup, repeats)
    identity = {"model": str(model_path), "task": task.name, "limit": limit, "threads": threads}
    ident_path = output / "tune-run.json"
    if ident_path.is_file() and json.loads(ident_path.read_text()) != identity:
        raise ConfigError(
            f"{output} holds a tune run of {json.loads(ident_path.read_text())}, not {identity}: "
            "choose another --output or delete it"
        )
    write_json_atomic(ident_path, identity)

    ref_dir = output / "candidates" / "teacher-eager"
    if (ref_dir / ROW_FILE).is_file():
        reference = json.loads((ref_dir / ROW_FILE).read_text())
    else:
        from gearshift.runtime import save_model

        base = getattr(teacher, "base", teacher)
        art = save_model(base, ref_dir / "artifact", tokenizer=tok)
        reference = {
            "name": "teacher-eager",
            "method": "teacher",
            "setting": "fp32",
            "engine": "eager",
            "score": _score(teacher, ctx),
            "latency_ratio_b1": 1.0,
            "latency_ratio_b32": 1.0,
            "flops": _flops(teacher),
            "size_on_disk": _size_on_disk(art),
            "threads": threads,
        }
        reference.update(reference_score=reference["score"], flops_ratio=1.0, size_ratio=1.0)
        write_json_atomic(ref_dir / ROW_FILE, reference)
    ctx.reference = reference
    rows = [reference]
    cands = candidates(teacher, engines, ratios)
    for cand in tqdm(cands, desc="tune", unit="candidate", disable=not progress):
        folder = output / "candidates" / cand.name
        if (folder / ROW_FILE).is_file():
            rows.append(json.loads((folder / ROW_FILE).read_text()))
            continue
        if folder.exists():  # an interrupted candidate: measure it again from scratch
            shutil.rmtree(folder)
        try:
            rows.append(measure(cand, ctx, folder))
        except GearshiftError as exc:
            logger.warning("candidate %s skipped: %s", cand.name, exc)
            print(f"tune: candidate {cand.name} skipped: {exc}", file=sys.stderr)
    best = select_best(rows, budgets)
    write_json_atomic(
        output / "frontier.json",
        {"budgets": dict(budgets), "rows": rows, "best": best, "frontier": frontier(rows)},
    )
    plot_frontier(rows, best, output / "frontier.png", f"{task.name}: {Path(str(model_path)).name}")
    if best is None:
        raise GearshiftError(
            f"no candidate fits the budget {dict(budgets)}; the closest are in "
            f"{output / 'frontier.json'} (loosen the budget or add candidates)"
        )
    best_folder = output / "best"
    src = output / "candidates" / best["name"] / "artifact"

    def copy_best(tmp: Path) -> None:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        (tmp / "tune.json").write_text(
            json.dumps({"budgets": dict(budgets), "row": best}, indent=2)
        )

    from gearshift.runtime.io import write_folder_atomically

    if best_folder.exists():
        shutil.rmtree(best_folder)
    write_folder_atomically(best_folder, copy_best)
    return {"rows": rows, "best": best, "frontier": frontier(rows), "best_folder": best_folder}


def run_tune(args: argparse.Namespace) -> int:
    budgets = parse_budgets(args.budget)
    quick = args.quick
    result = tune(
        args.model,
        args.task,
        args.output,
        budgets,
        engines=args.engines or (["eager", "onnx", "onnx-int8"]),
        ratios=[2.0] if quick else args.ratios,
        limit=args.limit if args.limit is not None else (64 if quick else None),
        threads=args.threads or 1,
        warmup=1 if quick else 5,
        repeats=3 if quick else 30,
        data_dir=args.data_dir,
        progress=not args.no_progress,
    )
    print(table(result["rows"], result["best"]))
    print(
        f"\nplot: {Path(args.output) / 'frontier.png'}; rows: {Path(args.output) / 'frontier.json'}"
    )
    b = result["best"]
    print(
        f"\nbest under {dict(budgets)}: {b['name']} (score {b['score']:.2f}, latency ratio "
        f"b1 {b['latency_ratio_b1']:.2f} / b32 {b['latency_ratio_b32']:.2f}) -> {result['best_folder']}"
    )
    return 0


def add_tune_parser(sub, func) -> None:
    p = sub.add_parser(
        "tune",
        help="measure candidate models on dev and write the best one under a budget",
        description=__doc__.split("\n\n")[2],
    )
    p.add_argument("--model", required=True, help="the teacher (model or stack folder)")
    p.add_argument("--task", required=True, help="the task whose dev split scores candidates")
    p.add_argument(
        "--budget",
        action="append",
        required=True,
        metavar="KEY=VALUE",
        help="latency=R, flops=R, size=R (ratios to the teacher) or drop=P (points); repeatable",
    )
    p.add_argument("--output", default="runs/tune", help="cache and results folder")
    p.add_argument(
        "--engines",
        nargs="+",
        choices=["eager", "compiled", "onnx", "onnx-int8"],
        help="engines to try (default: eager onnx onnx-int8)",
    )
    p.add_argument("--ratios", nargs="+", type=float, default=[2.0, 4.0], help="SVD ratios to try")
    p.add_argument(
        "--limit", type=int, help="dev examples to score (default: all; 64 with --quick)"
    )
    p.add_argument("--threads", type=int, help="intra-op threads for every timing (default 1)")
    p.add_argument("--data-dir", help="folder with the task's files")
    p.add_argument(
        "--quick", action="store_true", help="CI: 64 dev examples, ratio 2, 3 timed runs"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=func)
