"""Fine-tuning a model on a task: :func:`finetune` (the best dev checkpoint saved as a
gearshift folder), and :func:`training_finished` for a run folder."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gearshift.data import get_task
from gearshift.data.recorded import custom_task_record, model_for_task
from gearshift.data.taskdata import TaskData
from gearshift.errors import ConfigError
from gearshift.measure.evaluate import evaluate
from gearshift.runtime import load_pretrained, save_model
from gearshift.train.config import TrainConfig
from gearshift.train.loop import Trainer


@dataclass
class FinetuneResult:
    """Where the best model was saved and how it scored on the dev split."""

    model_dir: Path
    task: str
    metric: str
    score: float
    dev_metrics: dict[str, float]
    train_seconds: float
    steps: int


def finetune(
    model: str | os.PathLike | torch.nn.Module,
    task_name: str,
    output_dir: str | Path,
    train_config: TrainConfig | None = None,
    train_limit: int | None = None,
    dev_limit: int | None = None,
    max_length: int = 128,
    data_dir: str | None = None,
    resume: bool = False,
    *,
    tokenizer: Any = None,
    loss_fn: Callable | None = None,
    save_fn: Callable[[torch.nn.Module, Path, Any, dict], Any] | None = None,
    load_fn: Callable[[Path], torch.nn.Module] | None = None,
    extra: dict[str, Any] | None = None,
    trainable_params: Callable[[torch.nn.Module], Any] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` on ``task_name``; the best dev checkpoint is saved as a gearshift
    folder at ``<output_dir>/best`` (with tokenizer and task info).

    ``model``: a model name or folder (loaded with the task's head), or a model object (its
    head is replaced when it does not fit the task; pass ``tokenizer`` then). Methods hook in
    with ``loss_fn`` (the Trainer's ``loss_fn(model, batch)``; default: the model's own task
    loss), ``save_fn(model, folder, tokenizer, meta)`` and ``load_fn(folder)`` for folders
    of their own kind, ``extra`` (added to the saved gearshift.json) and
    ``trainable_params(model)`` (the Trainer's: parameters or groups with their own ``lr``;
    default: every parameter at the config's learning rate).
    """
    task = get_task(task_name)
    # a fresh task head is drawn from torch's RNG: seed first, or two runs of the same
    # command start from different heads (the Trainer seeds only after the model exists)
    output_dir = Path(output_dir)
    config = train_config or TrainConfig(output_dir=str(output_dir))
    seed_everything(config.seed)
    if isinstance(model, (str, os.PathLike)):
        model_name = str(model)
        model, own_tokenizer = model_for_task(model_name, task)
        tokenizer = tokenizer or own_tokenizer
    else:
        model_name = None
        if tokenizer is None:
            raise ConfigError("finetune() on a model object needs its tokenizer: pass tokenizer=")
        head = model.config.head
        if head.kind != task.kind or head.num_labels != task.num_labels:
            labels = list(task.label_names) if task.label_names else None
            model.set_head(task.kind, task.num_labels, labels)
    train = TaskData.load(task, tokenizer, "train", train_limit, max_length, data_dir)
    dev = TaskData.load(task, tokenizer, "dev", dev_limit, max_length, data_dir)
    config.output_dir = str(output_dir)
    config.metric_for_best = config.metric_for_best or task.main_metric
    config.greater_is_better = task.greater_is_better
    # so `gearshift evaluate --model DIR` finds the task, and a custom task's files, again
    task_info = custom_task_record(task)
    meta = {"task": task_info, "base_model": model_name, "train_config": config.to_dict()}
    meta.update(extra or {})

    def save(m: torch.nn.Module, path: str | Path) -> None:
        if save_fn is not None:
            save_fn(m, Path(path), tokenizer, meta)
        else:
            save_model(m, path, tokenizer=tokenizer, extra=meta)

    trainer = Trainer(
        model,
        train.features,
        config,
        loss_fn=loss_fn,
        trainable_params=trainable_params,
        collate_fn=train.collator,
        eval_fn=lambda m: evaluate(m, dev),
        save_model_fn=save,
    )
    start = time.perf_counter()
    result = trainer.fit(resume=resume)
    seconds = time.perf_counter() - start
    best_dir = output_dir / "best"
    if not (best_dir / "gearshift.json").is_file():  # no eval ran: keep the final model
        save(trainer.model, best_dir)
    best = (load_fn or (lambda d: load_pretrained(str(d))))(best_dir)
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


def training_finished(output_dir: str | Path) -> bool:
    """True when the run in ``output_dir`` reached its last step (its final checkpoint says so).

    A ``best/`` folder alone is not enough: it exists after the first evaluation.
    """
    from gearshift.constants import TRAINER_STATE_NAME

    state = Path(output_dir) / "checkpoint" / TRAINER_STATE_NAME
    if not state.is_file():
        return False
    data = json.loads(state.read_text())
    return data.get("global_step", 0) >= data.get("total_steps", float("inf")) or bool(
        data.get("should_stop")
    )


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_output_free(output_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse (ConfigError) to start a fresh run in a folder that holds an earlier run's
    checkpoint or best model, unless ``resume`` (continue it) or ``overwrite`` (delete that
    run's checkpoint/ and best/ now, so nothing of it outlives the new run)."""
    output_dir = Path(output_dir)
    found = [
        name
        for name in ("checkpoint", "best")
        if (output_dir / name / "trainer_state.json").is_file()
        or (output_dir / name / "gearshift.json").is_file()
    ]
    if found and overwrite and not resume:
        import shutil

        for name in found:  # a stale best/ would otherwise outlive a run that never evaluates
            shutil.rmtree(output_dir / name)
        return
    if found and not resume:
        finished = " (finished)" if training_finished(output_dir) else " (unfinished)"
        raise ConfigError(
            f"--output {output_dir} already holds a run{finished}: "
            f"{', '.join(str(output_dir / n) for n in found)}. Pass --resume to continue it, "
            "--overwrite to replace it, or choose another --output"
        )


def describe_kept(output_dir: str | Path) -> str:
    """Return a few lines saying what a run left in ``output_dir`` and what each part is for."""
    from gearshift.constants import OPTIMIZER_NAME

    output_dir = Path(output_dir)

    def size(path: Path) -> str:
        total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return f"{total / 1e6:.0f} MB"

    lines = []
    best = output_dir / "best"
    if best.is_dir():
        lines.append(f"  {best} ({size(best)}): the best model; use it (--model {best})")
    ckpt = output_dir / "checkpoint"
    if ckpt.is_dir():
        if (ckpt / OPTIMIZER_NAME).is_file():
            what = "the last step's model, optimizer and trainer state: --resume continues it"
        else:
            what = (
                "the last step's model and trainer state (optimizer state deleted at the end; "
                "--keep-optimizer keeps it)"
            )
        lines.append(f"  {ckpt} ({size(ckpt)}): {what}")
    return "kept:\n" + "\n".join(lines) if lines else f"nothing kept in {output_dir}"
