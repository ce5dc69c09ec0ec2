"""The jobs behind the CLI's core verbs, under their historical names.

The code lives where it belongs (methods import from there, never from here):

- :func:`gearshift.train.finetune.finetune`: a teacher: a pre-trained checkpoint + a task
  head, trained on the task;
- :func:`gearshift.measure.evaluate.evaluate`: the task's official metric on a split
  (:class:`gearshift.data.taskdata.TaskData`);
- :func:`gearshift.demo.profile` and :func:`gearshift.demo.demo`: the main job;
- :mod:`gearshift.data.recorded`: the task a saved model records, one lookup for every verb.

This module keeps the old import paths working and holds the cached teachers
(:func:`ensure_teacher`, :data:`TEACHER_RECIPES`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gearshift.data import get_task
from gearshift.data.recorded import (
    custom_task_of_folder,
    model_for_task,
    task_of_folder,
)
from gearshift.data.taskdata import TaskData, dev_texts
from gearshift.demo import (
    DEMO_STAGES,
    DemoContext,
    demo,
    method_demo_stages,
    profile,
    teacher_row,
)
from gearshift.measure.evaluate import evaluate
from gearshift.measure.evaluate import predict_task as predict
from gearshift.train import TrainConfig
from gearshift.train.finetune import (
    FinetuneResult,
    finetune,
    seed_everything,
    training_finished,
)

logger = logging.getLogger("gearshift")

__all__ = [
    "DEMO_STAGES",
    "TEACHER_RECIPES",
    "DemoContext",
    "FinetuneResult",
    "TaskData",
    "custom_task_of_folder",
    "demo",
    "dev_texts",
    "ensure_teacher",
    "evaluate",
    "finetune",
    "method_demo_stages",
    "model_for_task",
    "predict",
    "profile",
    "seed_everything",
    "task_of_folder",
    "teacher_dir",
    "teacher_row",
    "training_finished",
]


# ---------------------------------------------------------------------- teachers
# The recipes behind every teacher in BENCHMARKS.md: full training sets, dev-set model
# selection at each epoch end. SST-2 gets one epoch (67k examples; ~2.1k steps).
TEACHER_RECIPES: dict[str, dict[str, Any]] = {
    "sst2": dict(epochs=1.0, learning_rate=1e-4, batch_size=32),
    "cola": dict(epochs=3.0, learning_rate=1e-4, batch_size=32),
    "mrpc": dict(epochs=3.0, learning_rate=1e-4, batch_size=32),
    "stsb": dict(epochs=3.0, learning_rate=1e-4, batch_size=32),
    "rte": dict(epochs=5.0, learning_rate=1e-4, batch_size=32),
    "qnli": dict(epochs=1.0, learning_rate=1e-4, batch_size=32),
    "conll2003": dict(epochs=3.0, learning_rate=1e-4, batch_size=32),
}


def teacher_dir(task_name: str, model_name: str = "minilm-l6") -> Path:
    """Where the cached teacher for (model, task) lives: outside the repo, in the cache."""
    from gearshift.paths import cache_dir

    safe = model_name.replace("/", "--")
    return cache_dir() / "teachers" / safe / get_task(task_name).name


def ensure_teacher(
    task_name: str, model_name: str = "minilm-l6", force: bool = False, progress: bool = True
) -> Path:
    """Return the folder of the fine-tuned teacher for (model, task), training it with
    :data:`TEACHER_RECIPES` first when it is missing (resuming an interrupted run)."""
    task = get_task(task_name)
    root = teacher_dir(task.name, model_name)
    best = root / "best"
    if training_finished(root) and (best / "gearshift.json").is_file() and not force:
        return best
    recipe = dict(
        TEACHER_RECIPES.get(task.name, dict(epochs=3.0, learning_rate=5e-5, batch_size=32))
    )
    cfg = TrainConfig(
        output_dir=str(root),
        warmup_ratio=0.06,
        save_every=200,
        seed=42,
        progress=progress,
        group_by_length=True,
        **recipe,
    )
    logger.warning("training the %s teacher for %s (cached at %s)", model_name, task.name, root)
    finetune(model_name, task.name, root, cfg, resume=not force)
    return best
