"""The main job, ``gearshift demo``: fine-tune a small teacher on a subset, evaluate,
profile, and print the operating-point table. Methods add rows through
:data:`DEMO_STAGES` (user code) and :func:`method_demo_stages` (the built-in methods)."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gearshift.atomic import write_json_atomic, write_text_atomic
from gearshift.data import TaskSpec, get_task
from gearshift.data.taskdata import TaskData
from gearshift.runtime import Transformer, load_pretrained, load_tokenizer
from gearshift.train import TrainConfig
from gearshift.train.finetune import finetune, training_finished


def profile(
    model: Transformer,
    tokenizer,
    task: TaskSpec,
    limit: int = 256,
    threads: int | None = None,
    data_dir: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Return parameters, FLOPs per example (dynamic and at length 128), latency (batch 1,
    32) and peak memory of ``model``, measured on ``limit`` real dev inputs of ``task``."""
    from gearshift.data.taskdata import dev_texts
    from gearshift.measure import profile_model

    texts = dev_texts(task, limit, data_dir)
    out = profile_model(model, tokenizer, texts, threads=threads, progress=progress)
    from gearshift.runtime.stack import Stack

    if isinstance(model, Stack):  # the closed form of what the stack runs (no early exit)
        from gearshift.compose.flops import stack_flops

        n = out["flops"]["seq_len"]
        out["flops"]["analytic_at_length"] = stack_flops(model, n)
        out["flops"]["analytic_setting"] = model.describe()
    return out


def teacher_row(
    task: TaskSpec, model_name: str, score: float, prof: dict[str, Any], command: str
) -> dict:
    """The reference operating point: the unmodified teacher, latency ratios 1 by definition."""
    from gearshift.measure import OperatingPoint

    return OperatingPoint(
        task=task.name,
        model=model_name,
        method="teacher",
        setting="full",
        metric=task.main_metric,
        score=score,
        flops_dynamic=prof["flops"]["per_example_dynamic"],
        flops_128=prof["flops"]["per_example_at_length"],
        params=prof["params"]["total"],
        latency_ratio_b1=1.0,
        latency_ratio_b32=1.0,
        reference_score=score,
        command=command,
        extras={
            "latency_ms_b1": prof["latency"]["b1"]["median_ms"],
            "latency_ms_b32": prof["latency"]["b32"]["median_ms"],
            "peak_memory_bytes_b32": prof["memory"]["b32"]["peak_bytes"],
        },
    ).to_dict()


@dataclass
class DemoContext:
    """What every demo stage sees: the teacher, its data and the reference measurements."""

    model_name: str
    task: TaskSpec
    teacher: Transformer
    tokenizer: Any
    dev: TaskData
    output_dir: Path
    threads: int | None
    teacher_score: float
    quick: bool = True
    rows: list[dict] = field(default_factory=list)
    resume: bool = True  # stages reuse what an earlier run of the demo trained


# A stage takes the context and returns operating-point rows. Each method contributes one
# (method_demo_stages); user code may append more here.
DEMO_STAGES: list[tuple[str, Callable[[DemoContext], list[dict]]]] = []


def method_demo_stages() -> list[tuple[str, Callable[[DemoContext], list[dict]]]]:
    """The built-in methods' demo stages, in the order the demo runs them."""
    from gearshift.methods.factorize.demo import demo_stage as factorize_stage
    from gearshift.methods.plugins.train import demo_stage as plugins_stage

    return [("plugins", plugins_stage), ("factorize", factorize_stage)]


def demo(
    model_name: str = "minilm-l6",
    task_name: str = "sst2",
    output_dir: str | Path = "runs/demo",
    train_limit: int = 4000,
    dev_limit: int | None = None,
    epochs: float = 1.0,
    threads: int | None = None,
    resume: bool = True,
    stages: list[str] | None = None,
    profile_limit: int = 256,
) -> list[dict]:
    """The main job: fine-tune a teacher on a subset, evaluate, profile, and return (and
    write) the operating-point table. Sized for a few minutes on 2 CPU cores."""
    from gearshift.measure import markdown_table

    output_dir = Path(output_dir)
    task = get_task(task_name)
    cfg = TrainConfig(
        output_dir=str(output_dir / "teacher"),
        epochs=epochs,
        batch_size=32,
        learning_rate=1e-4,
        warmup_ratio=0.06,
        eval_every=0,
        save_every=50,
        seed=42,
    )
    reused = resume and training_finished(output_dir / "teacher")
    if reused:
        print(
            f"[demo] reusing the teacher trained earlier in {output_dir / 'teacher'} (--fresh retrains it)"
        )
    else:
        print(
            f"[demo] fine-tuning {model_name} on {task.name} ({train_limit} training examples, "
            f"{epochs:g} epoch{'s' if epochs != 1 else ''}; a few minutes on 2 CPU cores)"
        )
    ft = finetune(
        model_name,
        task.name,
        output_dir / "teacher",
        cfg,
        train_limit=train_limit,
        dev_limit=dev_limit,
        resume=resume,
    )
    if reused:
        print(
            f"[demo] teacher dev {ft.metric} = {ft.score:.2f} (trained earlier, {ft.steps} steps)"
        )
    else:
        print(
            f"[demo] teacher dev {ft.metric} = {ft.score:.2f} "
            f"({ft.train_seconds:.0f} s, {ft.steps} steps)"
        )
    teacher = load_pretrained(str(ft.model_dir))
    tokenizer = load_tokenizer(str(ft.model_dir))
    dev = TaskData.load(task, tokenizer, "dev", dev_limit)
    print(f"[demo] profiling the teacher on {profile_limit} real dev sentences")
    prof = profile(teacher, tokenizer, task, limit=profile_limit, threads=threads, progress=True)
    command = (
        ("gearshift demo " + " ".join(shlex.quote(a) for a in sys.argv[2:])).strip()
        if sys.argv[1:2] == ["demo"]
        else "gearshift.demo.demo()"
    )
    row = teacher_row(task, model_name, ft.score, prof, command)
    ctx = DemoContext(
        model_name,
        task,
        teacher,
        tokenizer,
        dev,
        output_dir,
        threads,
        ft.score,
        rows=[row],
        resume=resume,
    )
    for name, stage in DEMO_STAGES + method_demo_stages():
        if stages is not None and name not in stages:
            continue
        print(f"[demo] stage: {name} (a minute or two on 2 CPU cores)")
        start = time.perf_counter()
        ctx.rows.extend(stage(ctx))
        print(f"[demo] stage {name} done in {time.perf_counter() - start:.0f} s")
    print("[demo] timing the teacher against itself: the noise floor of a latency ratio")
    spread = latency_noise(teacher, tokenizer, task, threads=threads)
    table = markdown_table(ctx.rows)
    legend = latency_legend(spread)
    write_json_atomic(output_dir / "operating_points.json", ctx.rows)
    write_text_atomic(output_dir / "operating_points.md", table + "\n" + legend + "\n")
    print("\nOperating points (" + task.name + ", dev):\n")
    print(table)
    print(legend)
    print(f"\n[demo] written to {output_dir}/operating_points.{{json,md}}")
    return ctx.rows


def latency_noise(
    model: Transformer,
    tokenizer: Any,
    task: TaskSpec,
    threads: int | None = None,
    rounds: int = 5,
    repeats: int = 5,
) -> dict[int, tuple[float, float]]:
    """Return, per batch size (1 and 32), the (lowest, highest) latency ratio of ``model``
    timed against itself in ``rounds`` interleaved runs of ``repeats`` timings each (the
    demo stages' setting): ratios of a method inside that range are ties with the teacher."""
    from gearshift.data.taskdata import dev_texts
    from gearshift.measure import compare_latency, forward_fn, make_batch

    texts = dev_texts(task, 64)
    out: dict[int, tuple[float, float]] = {}
    for size in (1, 32):
        batch = make_batch(tokenizer, texts, size)
        ratios = [
            compare_latency(
                {"teacher": forward_fn(model), "teacher again": forward_fn(model)},
                batch,
                warmup=1,
                repeats=repeats,
                threads=threads,
            ).ratios["teacher again"]
            for _ in range(rounds)
        ]
        out[size] = (min(ratios), max(ratios))
    return out


def latency_legend(spread: dict[int, tuple[float, float]]) -> str:
    """Return the lines printed under the operating-point table: what a latency ratio means
    and how far it moves by noise alone on this machine."""
    lines = [
        "latency_ratio_b1 / _b32: the method's median time per batch (1 or 32 sentences) over "
        "the teacher's, timed interleaved in one run; below 1 is faster, above 1 is slower.",
    ]
    for size, (lo, hi) in sorted(spread.items()):
        lines.append(
            f"noise at batch {size}: the teacher timed against itself gave ratios "
            f"{lo:.2f} to {hi:.2f} over 5 runs of 5 timings; a ratio inside that range "
            "is a tie."
        )
    lines.append("Timings on a loaded machine move; re-run on an idle one for numbers to quote.")
    return "\n".join(lines)
