"""Teachers: MiniLM-L6 fine-tuned on the full training sets; dev scores and costs.

    python benchmarks/teachers.py                 # all five GLUE tasks
    python benchmarks/teachers.py --tasks rte mrpc

Teachers are cached outside the repository (``gearshift.paths.cache_dir()/teachers``) and
rebuilt with ``gearshift.jobs.TEACHER_RECIPES`` when missing; every later benchmark measures
its method against them. Rows go to ``benchmarks/results/teachers.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from report import command_line  # benchmarks/ is on sys.path

from gearshift.data import get_task
from gearshift.jobs import TaskData, ensure_teacher, evaluate, profile, teacher_row
from gearshift.measure import ResultsSink, markdown_table, write_results
from gearshift.runtime import load_pretrained, load_tokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "teachers.json"
GLUE5 = ["sst2", "mrpc", "rte", "stsb", "cola"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=GLUE5)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument(
        "--force", action="store_true", help="retrain even if a cached teacher exists"
    )
    parser.add_argument(
        "--train-only", action="store_true", help="build the teachers, measure nothing"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    folders = {t: ensure_teacher(t, args.model, force=args.force) for t in args.tasks}
    if args.train_only:
        return 0
    command = command_line(__file__, argv)
    # Keep this file's rows of tasks not measured in this run (other benchmarks' files hold
    # teacher rows too; those are theirs).
    measured = {get_task(t).name for t in args.tasks}
    previous = [r for r in ResultsSink(RESULTS, "teachers").rows if r["task"] not in measured]
    rows = list(previous)
    for name, folder in folders.items():
        task = get_task(name)
        model, tok = load_pretrained(str(folder)), load_tokenizer(str(folder))
        metrics = evaluate(model, TaskData.load(task, tok, "dev"))
        prof = profile(model, tok, task, threads=args.threads)
        row = teacher_row(task, args.model, metrics[task.main_metric], prof, command)
        row["extras"]["dev_metrics"] = metrics
        row["extras"]["teacher_dir"] = str(folder)
        rows.append(row)
        print(f"{task.name}: {task.main_metric} = {metrics[task.main_metric]:.2f}", flush=True)
    write_results(RESULTS, rows, "teachers")
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
