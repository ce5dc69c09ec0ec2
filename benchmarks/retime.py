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
Plugins rows are re-timed by ``benchmarks/plugins.py --retime``; slim and factorize rows
record no artifact folder, so they are re-timed by re-running their benchmark.
``--quick`` lists the rows and their artifacts and times nothing.
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

OWN_RETIME = {"plugins": "python benchmarks/plugins.py --retime --threads 1 --tasks <task>"}


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("benchmark", help="results file name under benchmarks/results/ (e.g. steps)")
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--methods", nargs="*", help="only these methods (default: every one)")
    p.add_argument("--threads", type=int, default=TimingProtocol.threads)
    p.add_argument("--warmup", type=int, default=TimingProtocol.warmup)
    p.add_argument("--repeats", type=int, default=TimingProtocol.repeats)
    p.add_argument("--rounds", type=int, default=TimingProtocol.rounds)
    p.add_argument("--max-load", type=float, default=TimingProtocol.max_load)
    p.add_argument("--allow-load", action="store_true", help="re-time on a busy machine (recorded)")
    p.add_argument("--profile-limit", type=int, default=128, help="dev texts the batches use")
    p.add_argument("--quick", action="store_true", help="list rows and artifacts; time nothing")
    args = p.parse_args(argv)
    if args.benchmark in OWN_RETIME:
        print(f"{args.benchmark} rows are re-timed by `{OWN_RETIME[args.benchmark]}`")
        return 2
    path = RESULTS / f"{args.benchmark}.json"
    if not path.is_file():
        print(f"no results file {path}; name a benchmark with rows (e.g. steps)", file=sys.stderr)
        return 2
    protocol = TimingProtocol(
        threads=args.threads,
        warmup=args.warmup,
        repeats=args.repeats,
        rounds=args.rounds,
        max_load=args.max_load,
    )
    sink = ResultsSink(path, args.benchmark)
    command = command_line(__file__, argv)
    status = 0
    for task_name in args.tasks:
        task = get_task(task_name)
        rows = [
            r
            for r in sink.rows
            if r["task"] == task.name
            and (r.get("latency_ratio_b1") is not None or r.get("latency_ratio_b32") is not None)
            and (not args.methods or r["method"] in args.methods or r["method"] == "teacher")
        ]
        teacher = next((r for r in rows if r["method"] == "teacher"), None)
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
        for r, folder in missing:
            where = f"{folder} is missing" if folder else "no artifact folder recorded"
            print(f"  - {r['method']} | {r['setting']}: {where}; rebuild: `{r.get('command')}`")
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
