"""The paper's protocol: compress the pre-trained model, then fine-tune it on the task.

Fine-tuning trains the compressed form itself (low-rank factors; or codes, row norms and
decoders, the weight being rebuilt in every training step), so the result stays as small
as the compression left it. It mirrors :func:`gearshift.jobs.finetune` (same Trainer, same
dev-set model selection), but starts from a model object and saves factorized folders.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import nn

from gearshift.data import get_task
from gearshift.jobs import FinetuneResult, TaskData, evaluate
from gearshift.methods.factorize.model import load_factorized, save_factorized
from gearshift.train import TrainConfig, Trainer


def finetune_compressed(
    model: nn.Module,
    tokenizer: Any,
    task_name: str,
    output_dir: str | Path,
    train_config: TrainConfig | None = None,
    train_limit: int | None = None,
    dev_limit: int | None = None,
    max_length: int = 128,
    data_dir: str | None = None,
    resume: bool = False,
) -> FinetuneResult:
    """Fine-tune a compressed ``model`` on ``task_name``; the best dev checkpoint is saved
    as a factorized gearshift folder at ``<output_dir>/best``. Returns its dev score."""
    task = get_task(task_name)
    head = model.config.head
    if head.kind != task.kind or head.num_labels != task.num_labels:
        labels = list(task.label_names) if task.label_names else None
        model.set_head(task.kind, task.num_labels, labels)
    train = TaskData.load(task, tokenizer, "train", train_limit, max_length, data_dir)
    dev = TaskData.load(task, tokenizer, "dev", dev_limit, max_length, data_dir)
    output_dir = Path(output_dir)
    config = train_config or TrainConfig(output_dir=str(output_dir))
    config.output_dir = str(output_dir)
    config.metric_for_best = config.metric_for_best or task.main_metric
    config.greater_is_better = task.greater_is_better
    fconfig = model.factorize_config
    extra = {
        "task": {"name": task.name, "kind": task.kind, "label_names": list(task.label_names or [])},
        "train_config": config.to_dict(),
    }

    def save(m: nn.Module, path: str | Path) -> None:
        save_factorized(m, path, fconfig, tokenizer=tokenizer, extra=extra)

    trainer = Trainer(
        model,
        train.features,
        config,
        collate_fn=train.collator,
        eval_fn=lambda m: evaluate(m, dev),
        save_model_fn=save,
    )
    start = time.perf_counter()
    result = trainer.fit(resume=resume)
    seconds = time.perf_counter() - start
    best_dir = output_dir / "best"
    if not (best_dir / "gearshift.json").is_file():
        save(trainer.model, best_dir)
    best = load_factorized(best_dir)
    metrics = evaluate(best, dev)
    return FinetuneResult(
        best_dir,
        task.name,
        task.main_metric,
        metrics[task.main_metric],
        metrics,
        seconds,
        result.global_step,
    )
