"""The demo's offline-compression stage: whitened SVD (the strongest method measured so far)
at ratio 2 on the demo's teacher, no fine-tuning; a few seconds of work."""

from __future__ import annotations

import copy
from typing import Any

from gearshift.measure import (
    OperatingPoint,
    compare_latency,
    count_parameters,
    flops_at_length,
    flops_per_example,
    forward_fn,
    make_batch,
)

from .calibration import calibration_batches
from .compress import compress
from .config import FactorizeConfig


def demo_stage(ctx: Any) -> list[dict]:
    """``jobs.DEMO_STAGES`` entry: compress a copy of the teacher, score it on the demo's dev
    set, and time it against the teacher in one interleaved run."""
    from gearshift.data.taskdata import dev_texts
    from gearshift.measure.evaluate import evaluate

    config = FactorizeConfig(method="svdllm", ratio=2.0, progress=False)
    cal = calibration_batches(ctx.tokenizer, "task", ctx.task, 64 if ctx.quick else 256)
    model, report = compress(copy.deepcopy(ctx.teacher), config, cal)
    score = evaluate(model, ctx.dev)[ctx.task.main_metric]
    texts = dev_texts(ctx.task, 64)
    ratios = {}
    for size in (1, 32):
        cmp = compare_latency(
            {"teacher": forward_fn(ctx.teacher), "svdllm": forward_fn(model)},
            make_batch(ctx.tokenizer, texts, size),
            warmup=2,
            repeats=5 if ctx.quick else 20,
            threads=ctx.threads,
        )
        ratios[size] = cmp.ratios["svdllm"]
    print(
        f"[demo] factorize svdllm ratio 2: {ctx.task.main_metric} {score:.2f} "
        f"(teacher {ctx.teacher_score:.2f}), stored ratio {report.achieved_ratio:.2f}"
    )
    return [
        OperatingPoint(
            task=ctx.task.name,
            model=ctx.model_name,
            method="factorize",
            setting="svdllm, ratio 2, no fine-tuning",
            metric=ctx.task.main_metric,
            score=score,
            reference_score=ctx.teacher_score,
            flops_dynamic=flops_per_example(
                model, [make_batch(ctx.tokenizer, [t], 1) for t in texts]
            ),
            flops_128=flops_at_length(model, 128),
            params=count_parameters(model),
            latency_ratio_b1=ratios[1],
            latency_ratio_b32=ratios[32],
            command="gearshift demo (stage factorize)",
            extras={"stored_ratio": report.achieved_ratio, "seconds": report.seconds},
        ).to_dict()
    ]
