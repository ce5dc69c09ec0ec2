"""The task a saved model was trained on, found one way for every verb.

A fine-tuned gearshift folder records its task in ``gearshift.json``::

    "task": {"name": "sst2", "kind": "classification", "label_names": [...],
             "custom": {...CustomTaskConfig.to_dict(), paths absolute...},   # custom tasks only
             "data_hint": "..."}                                              # custom tasks only

:func:`task_of_folder` reads it (registering a custom task so that ``get_task`` finds it),
:func:`resolve_task` picks the task a command runs on (an explicit task first, then the
model's own), :func:`check_task_fits` refuses to score a head on a task it was not trained
for, and :func:`model_for_task` loads a model with the head a task needs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from gearshift.data.tasks import TaskSpec, get_task
from gearshift.errors import ConfigError

logger = logging.getLogger("gearshift")

META_NAME = "gearshift.json"


def _recorded(folder: str | Path) -> dict[str, Any] | None:
    """Return the ``task`` entry of ``folder``'s gearshift.json, or None when there is none."""
    path = Path(folder) / META_NAME
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError:
        from gearshift.runtime.io import read_meta

        read_meta(folder)  # raises the error that names the line and the fix
        raise
    task = meta.get("task") if isinstance(meta, dict) else None
    return task if isinstance(task, dict) and task.get("name") else None


def custom_task_record(task: TaskSpec) -> dict[str, Any]:
    """Return what a saved model records about its task: name, kind, label names and, for a
    custom task, its config with absolute data paths plus a hint on what to pass when the
    files move."""
    info: dict[str, Any] = {
        "name": task.name,
        "kind": task.kind,
        "label_names": list(task.label_names or []),
    }
    if task.custom is not None:
        custom = task.custom.to_dict()
        for key in ("path", "dev_path"):
            if custom.get(key) is not None:
                custom[key] = str(Path(custom[key]).expanduser().resolve())
        info["custom"] = custom
        info["data_hint"] = data_hint(custom)
    return info


def data_hint(custom: dict[str, Any]) -> str:
    """Return the command-line flags that give a custom task's data again."""
    parts = [f"--train-file {custom['path']}"]
    if custom.get("dev_path"):
        parts.append(f"--dev-file {custom['dev_path']}")
    parts.append(f"--text-column {custom['text_column']}")
    if custom.get("text_pair_column") is not None:
        parts.append(f"--text-pair-column {custom['text_pair_column']}")
    parts.append(f"--label-column {custom['label_column']}")
    if custom.get("kind", "classification") != "classification":
        parts.append(f"--task-kind {custom['kind']}")
    if custom.get("has_header") is False:
        parts.append("--no-header")
    return " ".join(parts)


def task_of_folder(folder: str | Path) -> str | None:
    """Return the name of the task a saved model records (None when it records none).

    A custom task is registered on the way (so ``get_task(name)`` works); its label names
    come from the record, so its data files are read only when examples are loaded, and a
    missing file then names the model that recorded it and the flags to pass instead.
    """
    info = _recorded(folder)
    if info is None:
        return None
    custom = info.get("custom")
    if not custom:
        return str(info["name"])
    from gearshift.data.custom import CustomTaskConfig, make_custom_task

    values = dict(custom)
    values.setdefault("name", info["name"])
    if values.get("kind", "classification") == "classification" and not values.get("label_names"):
        values["label_names"] = info.get("label_names") or None
    values["recorded_in"] = str(Path(folder))
    return make_custom_task(CustomTaskConfig.from_dict(values)).name


# The old name: every lookup now registers custom tasks.
custom_task_of_folder = task_of_folder


def _looks_local(name: str) -> bool:
    """True when ``name`` reads as a local path rather than a hub name ("org/model")."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()


def check_model_exists(model: str) -> None:
    """Raise ConfigError when ``model`` names a local model folder that does not exist (a
    built-in alias or a hub name passes)."""
    from gearshift.paths import resolve_model_name

    path = Path(resolve_model_name(model)).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ConfigError(f"--model {model}: it is a file; pass the model's folder")
    if _looks_local(model):
        raise ConfigError(
            f"--model {model}: no such model folder; pass a folder written by gearshift "
            "(e.g. runs/demo/teacher/best), a Hugging Face checkpoint folder, or 'minilm-l6'"
        )


def resolve_task(
    model: str | None = None,
    task: TaskSpec | str | None = None,
    *,
    required: bool = True,
) -> TaskSpec | None:
    """Return the task a command runs on: ``task`` when given, else the task ``model``
    records (custom tasks included). Raises ConfigError naming the real problem (no such
    model folder, or a model that records no task) when neither gives one and ``required``.
    """
    if isinstance(task, TaskSpec):
        return task
    if task:
        return get_task(task)
    if model:
        check_model_exists(model)
        from gearshift.paths import resolve_model_name

        name = task_of_folder(resolve_model_name(model))
        if name is not None:
            return get_task(name)
    if not required:
        return None
    if model:
        from gearshift.paths import resolve_model_name

        if not Path(resolve_model_name(model)).expanduser().is_dir():
            raise ConfigError(
                f"--model {model}: no such model folder. Pass a folder written by gearshift "
                "(e.g. runs/demo/teacher/best); for a Hugging Face hub model, which records no "
                "task, also pass --task NAME"
            )
        raise ConfigError(
            f"no task given and {model} records none (it is not a fine-tuned gearshift "
            "folder): pass --task NAME (see `gearshift tasks`) or --train-file/--task-config"
        )
    raise ConfigError(
        "no task given: pass --task NAME (see `gearshift tasks`) or --train-file/--task-config"
    )


def describe_head(model: Any) -> str:
    """Return a short description of ``model``'s head, e.g. 'a classification head with 2
    labels (negative, positive)'."""
    head = model.config.head
    if head.kind is None:
        return "no task head"
    if head.kind == "regression":
        return "a regression head"
    names = f" ({', '.join(head.label_names)})" if head.label_names else ""
    return f"a {head.kind} head with {head.num_labels} labels{names}"


def check_task_fits(model_name: str, task: TaskSpec, force: bool = False) -> str | None:
    """Refuse (ConfigError) to score ``model_name`` on ``task`` when it was fine-tuned on
    another task; the message names the model's task and head, the asked task and the fix.
    With ``force`` (the ``--force-task`` flag) return that as a warning to print instead;
    None when the task fits."""
    from gearshift.paths import resolve_model_name

    info = _recorded(resolve_model_name(model_name))
    if info is None or info["name"] == task.name:
        return None
    head = f"a {info.get('kind')} head"
    if info.get("label_names"):
        head += f" with labels {', '.join(map(str, info['label_names']))}"
    message = (
        f"{model_name} was fine-tuned on {info['name']} ({head}); you asked for {task.name} "
        f"({task.kind}). Its head was never trained on {task.name}, so its score would mean "
        f"nothing. Fine-tune it on {task.name} first (gearshift finetune --model "
        f"{model_name} --task {task.name} --output DIR), evaluate it on {info['name']}, or "
        "pass --force-task to score it anyway."
    )
    if not force:
        raise ConfigError(message)
    return "WARNING: --force-task: " + message.split(" Fine-tune it")[0]


def model_for_task(model_name: str, task: TaskSpec) -> tuple[Any, Any]:
    """Load ``model_name`` with the head ``task`` needs; returns (model, tokenizer).

    A gearshift folder that already carries this task's head keeps it (a teacher); anything
    else gets a fresh head of the right kind and size, and ``model.head_is_fresh`` is True.
    """
    from gearshift.runtime import load_pretrained, load_tokenizer

    if task.kind == "text":
        raise ConfigError(f"task {task.name!r} is raw text: it has no labels to fine-tune on")
    labels = list(task.label_names) if task.label_names else None
    model = load_pretrained(model_name, head_kind="auto")
    head = model.config.head
    if head.kind != task.kind or head.num_labels != task.num_labels:
        if not hasattr(model, "set_head"):  # e.g. a stack: its head is its base model's
            raise ConfigError(
                f"{model_name} has {describe_head(model)}, and {task.name} needs a "
                f"{task.kind} head with {task.num_labels} outputs; this kind of folder cannot "
                "swap its head: build it from a model fine-tuned on the task"
            )
        model = load_pretrained(
            model_name, head_kind=task.kind, num_labels=task.num_labels, label_names=labels
        )
        model.head_is_fresh = True
    return model, load_tokenizer(model_name)


def head_is_trained(model: Any) -> bool:
    """Return False when ``model``'s head holds fresh random weights: a head swapped in by
    :func:`model_for_task` because the checkpoint had none that fits the task. A head loaded
    from a folder or checkpoint counts as trained (gearshift cannot tell more)."""
    return not getattr(model, "head_is_fresh", False)


def untrained_head_warning(model_name: str, task: TaskSpec) -> str:
    """Return the warning printed before the score of a model whose head was never trained."""
    return (
        f"WARNING: {model_name} has no trained {task.name} head: its head holds fresh random "
        f"weights, so the score below is chance level, not a result. Fine-tune it first: "
        f"gearshift finetune --model {model_name} --task {task.name} --output DIR"
    )


__all__ = [
    "check_model_exists",
    "check_task_fits",
    "custom_task_of_folder",
    "custom_task_record",
    "data_hint",
    "describe_head",
    "head_is_trained",
    "model_for_task",
    "resolve_task",
    "task_of_folder",
    "untrained_head_warning",
]
