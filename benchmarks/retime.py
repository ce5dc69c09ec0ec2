"""Re-time a benchmark's recorded rows by the one timing protocol (gearshift.measure.retime).

    python benchmarks/retime.py steps --tasks sst2
    python benchmarks/retime.py steps --tasks sst2 --methods shared-g1-step-aware-ln --rounds 7
    python benchmarks/retime.py steps --tasks sst2 --quick      # list what can be re-timed

Reloads each row's saved artifact (``extras.model_dir``, with the row's step plan for the
steps benchmark) and the task's teacher (the cache, ``gearshift.jobs.teacher_dir``), checks
that the machine is quiet, then times every candidate against the teacher, interleaved in
one process, at fixed threads, in several rounds; the rows get the median ratio and its
spread over rounds (``extras.retime``) and keep the in-run ratios
(``extras.latency_before_retime``). Scores are not touched. Rows whose artifact is not on
this machine (``runs/`` is not committed) are listed with the command that rebuilds them.
Plugins rows whose trained plugin is kept are re-timed by ``benchmarks/plugins.py --retime``.

``--stand-in`` (factorize, steps, slim, plugins): rows whose artifact is not kept are timed on a
same-shape stand-in, built by the benchmark's own ``stand_in(row, base)`` from the
pre-trained model with the task's head (the reference is that model too). A forward pass's
time depends on the shapes it multiplies, not on the weights' values, where nothing in it
branches on the data; rows whose time does (early exits) get no stand-in. Each stand-in
must have the row's parameter count and FLOPs at length 128, or the row is left alone and
listed; rows of one arithmetic (module shapes and step plan) are timed once, and the
others point at it (``timed_as``). The record says ``stand_in``, and the report marks it.
``benchmarks/stand_in_check.py`` times saved models beside their stand-ins to show the
premise holds on the machine at hand.

    python benchmarks/retime.py factorize --tasks sst2 --stand-in --warmup 3 --repeats 10 --rounds 3

``--quick`` lists the rows and their artifacts and times nothing. Only rows that carry a
latency are re-timed, unless ``--untimed`` also takes the selected rows that never had one
(a ``--no-latency`` run's: a training-free baseline scored again against a rebuilt teacher):

    python benchmarks/retime.py plugins --tasks sst2 --methods mean-merging truncation \
        --settings k4-ffn-mean k4-truncate --untimed --stand-in --warmup 3 --repeats 10 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from report import RESULTS, command_line

from gearshift.data import get_task
from gearshift.data.taskdata import dev_texts
from gearshift.jobs import teacher_dir
from gearshift.measure import forward_fn, make_batch
from gearshift.measure.report import ResultsSink
from gearshift.measure.retime import TimingProtocol, retime_rows
from gearshift.runtime import load_pretrained, load_tokenizer

STAND_IN_MODEL = "minilm-l6"
OWN_RETIME = {"plugins": "python benchmarks/plugins.py --retime --threads 1 --tasks <task>"}
STAND_INS = (
    "factorize",
    "steps",
    "slim",
    "plugins",
)  # their scripts rebuild a row's shapes (stand_in)
STAND_IN_NOTE = (
    "same-shape stand-in (the trained model is not kept): built from pre-trained {model} "
    "with the task's head by benchmarks/{benchmark}.py's stand_in; its parameters and FLOPs "
    "at length 128 equal the row's, and the reference is the same pre-trained model"
)


def artifact_of(benchmark: str, row: dict) -> Path | None:
    """The saved folder a row's model was loaded from, or None if it records none."""
    folder = row.get("extras", {}).get("model_dir")
    return Path(folder) if folder else None


def candidate(benchmark: str, row: dict, folder: Path) -> Any:
    """The callable to time for ``row``: its saved model, run with the row's step plan
    (steps benchmark: ``extras.n_steps`` steps by ``extras.solver``) where it has one."""
    model = load_pretrained(str(folder)).eval()
    extras = row.get("extras", {})
    if benchmark == "steps" and extras.get("n_steps"):
        from gearshift.methods.steps import step_plan

        plan = step_plan(model.config, extras["n_steps"], solver=extras.get("solver", "euler"))
        return forward_fn(model, plan)
    return forward_fn(model)


def add_protocol_args(p: argparse.ArgumentParser, **defaults: Any) -> None:
    """The timing protocol's options (``TimingProtocol``'s defaults unless given), the
    load switch and the dev texts the batches use; :func:`protocol_of` reads them back."""
    for name in ("threads", "warmup", "repeats", "rounds"):
        p.add_argument(
            f"--{name}", type=int, default=defaults.get(name, getattr(TimingProtocol, name))
        )
    p.add_argument("--max-load", type=float, default=TimingProtocol.max_load)
    p.add_argument("--allow-load", action="store_true", help="time on a busy machine (recorded)")
    p.add_argument("--profile-limit", type=int, default=128, help="dev texts the batches use")


def protocol_of(args: argparse.Namespace) -> TimingProtocol:
    return TimingProtocol(
        threads=args.threads,
        warmup=args.warmup,
        repeats=args.repeats,
        rounds=args.rounds,
        max_load=args.max_load,
    )


def base_model(task) -> Any:
    """Pre-trained MiniLM-L6 with ``task``'s head (a seeded draw): what stand-ins are built
    from, and the reference they are timed against (the teacher's shapes)."""
    import torch

    from gearshift.runtime.io import _init_head

    model = load_pretrained(STAND_IN_MODEL)
    torch.manual_seed(0)
    model.set_head(task.kind, task.num_labels, list(task.label_names or []) or None)
    _init_head(model)
    return model.eval()


def _wrap_key(wrap: Any) -> tuple:
    """What a plan's wrap runs: the type of the module it belongs to, that module's
    ``config`` where it has one, and the function's name (a plugin's layer has no config:
    its k and first-token rule show in the FLOPs, which :func:`arithmetic` keys on too)."""
    owner = getattr(wrap, "__self__", wrap)
    config = getattr(owner, "config", None)
    return type(owner).__name__, repr(config), getattr(wrap, "__name__", type(wrap).__name__)


def arithmetic(model: Any, plan: Any) -> tuple:
    """What a forward pass computes, for grouping stand-ins: every module's type and
    parameter shapes, the step plan's steps and update rule, what each layer's wraps run
    (two plugins of one size but another k, placement or first-token rule are different
    arithmetic), whether it exits early, and its FLOPs at length 128 (or the model's most)."""
    from factorize import signature

    from gearshift.measure import flops_at_length

    steps = wraps = None
    if plan is not None and plan.steps is not None:
        steps = tuple((s.block, s.layer, s.step_size, s.start) for s in plan.steps)
    if plan is not None:
        wraps = tuple(
            (kind, layer, _wrap_key(w))
            for kind, table in (("ffn", plan.ffn_wrap), ("block", plan.block_wrap))
            for layer, w in sorted(table.items())
        ) + (("exit", plan.exit is not None),)
    update = getattr(getattr(plan, "update", None), "__name__", None)
    c = model.config
    length = min(128, c.max_positions - c.position_offset)  # a tiny test model has fewer
    return signature(model), steps, update, wraps, flops_at_length(model, length, plan=plan)


def build_stand_in(module: Any, row: dict, base: Any) -> tuple[Any, Any, str]:
    """``(model, plan, "")`` for ``row`` from ``module.stand_in``, or ``(None, None, why)``
    where there is none or its shapes do not match the row's (parameters, FLOPs at 128).
    FLOPs that differ by exactly a known change of the count (the script's ``flops_recount``
    names it) pass, with ``row`` marked for re-counting (``_recount``: see :func:`recounted`)."""
    from gearshift.measure import count_parameters, flops_at_length

    got = module.stand_in(row, base)
    if got is None:
        return (
            None,
            None,
            (
                "no stand-in (its time depends on its trained weights, or its form is not one the "
                f"script rebuilds); rebuild: `{row.get('command')}`"
            ),
        )
    model, plan = got
    params = count_parameters(model)
    if row.get("params") is not None and params != row["params"]:
        return None, None, f"stand-in has {params} parameters, the row {row['params']}"
    if row.get("flops_128") is not None:
        flops = flops_at_length(model, 128, plan=plan)
        if abs(flops - row["flops_128"]) > 0.5:
            recount = getattr(module, "flops_recount", None)
            reason = recount(row, base, flops) if recount else None
            if reason is None:
                return (
                    None,
                    None,
                    f"stand-in does {flops:.0f} FLOPs at 128, the row {row['flops_128']}",
                )
            row["_recount"] = (flops - row["flops_128"], reason)
    return model, plan, ""


def recounted(row: dict) -> dict:
    """``row`` with a known FLOPs change applied (``_recount`` from :func:`build_stand_in`):
    ``flops_128`` and ``flops_dynamic`` move by the per-example difference, the saved shares
    in ``extras`` follow, and ``extras.flops_recount`` keeps the old values and the reason."""
    delta, reason = row.pop("_recount", (None, None))
    if delta is None:
        return row
    extras = row.setdefault("extras", {})
    before = {k: row.get(k) for k in ("flops_128", "flops_dynamic")}
    before.update({k: extras[k] for k in ("saved_flops_128", "saved_flops_dynamic") if k in extras})
    for key in ("flops_128", "flops_dynamic"):
        if row.get(key) is None:
            continue
        saved = extras.get(f"saved_{key}")
        new = row[key] + delta
        if saved is not None and saved < 1:
            extras[f"saved_{key}"] = 1 - new * (1 - saved) / row[key]
        row[key] = new
    extras["flops_recount"] = {"before": before, "reason": reason}
    return row


def retime_stand_ins(
    benchmark: str,
    task: Any,
    rows: list[dict],
    teacher: dict,
    args: Any,
    protocol: Any,
    command: str,
) -> tuple[list[dict], list[str]]:
    """Time same-shape stand-ins of ``rows`` (and of ``teacher``, the reference) by the shared
    protocol; return the re-timed rows and a line per row left alone."""
    import copy
    import importlib

    module = importlib.import_module(benchmark)
    base = base_model(task)
    tok = load_tokenizer(STAND_IN_MODEL)
    texts = dev_texts(task, args.profile_limit)
    batches = {size: make_batch(tok, texts, size) for size in (1, 32)}
    singles = [make_batch(tok, [t], 1) for t in texts[: getattr(module, "B1_EXAMPLES", 1)]]
    # one arithmetic, one timing: the first row of each group is timed, the others point at it
    groups: dict[tuple, list[dict]] = {}
    fns: dict[tuple, Any] = {}
    skipped = []
    for r in [teacher] + rows:
        model, plan, why = build_stand_in(module, r, base)
        if model is None:
            skipped.append(f"  - {r['method']} | {r['setting']}: {why}")
            continue
        key = arithmetic(model, plan)
        groups.setdefault(key, []).append(r)
        fns.setdefault(key, forward_fn(model, plan) if plan is not None else forward_fn(model))
    ref_key = next((k for k, g in groups.items() if g[0] is teacher), None)
    if ref_key is None:
        return [], skipped + ["  the teacher's stand-in could not be built: nothing timed"]
    b1_loop = len(singles) > 1  # the benchmark's batch 1 is a pass over single examples

    def candidate(row: dict) -> Any:
        fn = fns[key_of[id(row)]]
        if not b1_loop:
            return fn

        def run(batch, fn=fn):
            if batch["input_ids"].shape[0] == 1:
                return [fn(b) for b in singles]
            return fn(batch)

        return run

    firsts = [g[0] for g in groups.values()]
    key_of = {id(g[0]): k for k, g in groups.items()}  # each timed row's arithmetic
    # names must be unique per (method, setting); the teacher row is the reference
    timed = retime_rows(
        firsts,
        teacher,
        candidate,
        batches,
        command=command,
        protocol=protocol,
        allow_load=args.allow_load,
    )
    note = STAND_IN_NOTE.format(model=STAND_IN_MODEL, benchmark=benchmark)
    if b1_loop:
        note += f"; batch 1 is a pass over the first {len(singles)} dev texts one at a time"
    out = []
    for first, new in zip(firsts, timed):
        group = groups[key_of[id(first)]]
        new["extras"]["retime"]["stand_in"] = note
        if "_recount" in first:
            new["_recount"] = first.pop("_recount")
        out.append(recounted(new))
        for other in group[1:]:
            if other is teacher:
                continue
            twin = copy.deepcopy(other)
            extras = twin.setdefault("extras", {})
            extras.setdefault(
                "latency_before_retime",
                {k: other.get(k) for k in ("latency_ratio_b1", "latency_ratio_b32")},
            )
            extras["retime"] = {
                **new["extras"]["retime"],
                "timed_as": f"{first['method']} | {first['setting']}",
            }
            for size in (1, 32):
                twin[f"latency_ratio_b{size}"] = (
                    1.0 if first is teacher else new[f"latency_ratio_b{size}"]
                )
            other.pop("_recount", None)
            out.append(recounted(twin))
    return out, skipped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("benchmark", help="results file name under benchmarks/results/ (e.g. steps)")
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--methods", nargs="*", help="only these methods (default: every one)")
    p.add_argument("--settings", nargs="*", help="only rows of these settings (default: every one)")
    add_protocol_args(p)
    p.add_argument("--quick", action="store_true", help="list rows and artifacts; time nothing")
    p.add_argument(
        "--untimed",
        action="store_true",
        help="also time the selected rows that were never timed (a --no-latency run's); "
        "narrow them with --methods / --settings",
    )
    p.add_argument(
        "--stand-in",
        action="store_true",
        help=f"time same-shape stand-ins of rows whose artifact is gone ({', '.join(STAND_INS)})",
    )
    args = p.parse_args(argv)
    if args.stand_in and args.benchmark not in STAND_INS:
        print(
            f"--stand-in works for {', '.join(STAND_INS)} (their scripts rebuild a row's "
            f"shapes); {args.benchmark} rows are re-timed from their saved artifacts",
            file=sys.stderr,
        )
        return 2
    if args.benchmark in OWN_RETIME and not args.stand_in:
        print(f"{args.benchmark} rows are re-timed by `{OWN_RETIME[args.benchmark]}`")
        return 2
    path = RESULTS / f"{args.benchmark}.json"
    if not path.is_file():
        print(f"no results file {path}; name a benchmark with rows (e.g. steps)", file=sys.stderr)
        return 2
    protocol = protocol_of(args)
    sink = ResultsSink(path, args.benchmark)
    command = command_line(__file__, argv)
    status = 0
    for task_name in args.tasks:
        task = get_task(task_name)
        rows = [
            r
            for r in sink.rows
            if r["task"] == task.name
            and (
                args.untimed
                or r.get("latency_ratio_b1") is not None
                or r.get("latency_ratio_b32") is not None
            )
            and (not args.methods or r["method"] in args.methods or r["method"] == "teacher")
            and (not args.settings or r["setting"] in args.settings or r["method"] == "teacher")
        ]
        teacher = next((r for r in rows if r["method"] == "teacher"), None)
        if teacher is None and args.stand_in:  # an untimed teacher row still names the reference
            teacher = next(
                (r for r in sink.rows if r["task"] == task.name and r["method"] == "teacher"), None
            )
            rows = [teacher] + rows if teacher else rows
        found, missing = [], []
        for r in rows:
            if r is teacher:
                continue
            folder = artifact_of(args.benchmark, r)
            (found if folder and folder.is_dir() else missing).append((r, folder))
        print(
            f"[retime] {args.benchmark} {task.name}: {len(rows)} timed rows, {len(found)} with "
            f"their artifact here, {len(missing)} without"
        )
        for r, folder in [] if args.stand_in else missing:
            where = f"{folder} is missing" if folder else "no artifact folder recorded"
            print(f"  - {r['method']} | {r['setting']}: {where}; rebuild: `{r.get('command')}`")
        if args.stand_in and missing:
            if teacher is None:
                print("  no teacher row to time the stand-ins against")
                status = 1
                continue
            if not args.quick:
                retimed, skipped = retime_stand_ins(
                    args.benchmark, task, [r for r, _ in missing], teacher, args, protocol, command
                )
                sink.add(retimed)
                print(f"  stand-ins: {len(retimed)} rows re-timed, {len(skipped)} left alone")
                for line in skipped:
                    print(line)
                for r in retimed:
                    rec = r["extras"]["retime"]
                    if "timed_as" not in rec and r["method"] != "teacher":
                        lo, hi = rec["ratio_b32_spread"]
                        print(
                            f"  {r['method']} | {r['setting']}: b1 {rec['ratio_b1']:.3f}, "
                            f"b32 {rec['ratio_b32']:.3f} ({lo:.3f}-{hi:.3f})"
                        )
            if not found:
                continue
        best = teacher_dir(task.name) / "best"
        if teacher is None or not best.is_dir():
            print(f"  no teacher to time against (row or {best}); run benchmarks/teachers.py")
            status = 1
            continue
        if args.quick or not found:
            status = status or (0 if args.quick else 1)
            continue
        tok = load_tokenizer(str(best))
        texts = dev_texts(task, args.profile_limit)
        batches = {size: make_batch(tok, texts, size) for size in (1, 32)}
        folders = {id(teacher): best} | {id(r): f for r, f in found}
        retimed = retime_rows(
            [teacher] + [r for r, _ in found],
            teacher,
            lambda r, folders=folders: candidate(args.benchmark, r, folders[id(r)]),
            batches,
            command=command,
            protocol=protocol,
            allow_load=args.allow_load,
        )
        sink.add(retimed)
        for r in retimed[1:]:
            rec = r["extras"]["retime"]
            lo, hi = rec["ratio_b32_spread"]
            print(
                f"  {r['method']} | {r['setting']}: b32 {rec['ratio_b32']:.3f} ({lo:.3f}-{hi:.3f})"
            )
    return status


if __name__ == "__main__":
    sys.exit(main())
