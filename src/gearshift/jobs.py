"""One entry point per job; the CLI maps onto these one to one.

- :func:`finetune`: a teacher: a pre-trained checkpoint + a task head, trained on the task.
- :func:`evaluate`: the task's official metric on a split.
- :func:`profile`: parameters, FLOPs, latency, memory on real dev sentences.
- :func:`demo`: the main job: fine-tune a small teacher, evaluate, profile, print the
  operating-point table. Methods add rows through :data:`DEMO_STAGES`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gearshift.data import (
    TaskSpec,
    compute_metrics,
    encode_examples,
    get_task,
    load_examples,
    make_collator,
    make_dataloader,
)
from gearshift.errors import ConfigError
from gearshift.runtime import Transformer, load_pretrained, load_tokenizer, save_model
from gearshift.runtime.io import read_meta
from gearshift.train import TrainConfig, Trainer

logger = logging.getLogger("gearshift")


# ---------------------------------------------------------------------- models for tasks
def model_for_task(model_name: str, task: TaskSpec) -> tuple[Transformer, Any]:
    """Load ``model_name`` with the head ``task`` needs; returns (model, tokenizer).

    A gearshift folder that already carries this task's head keeps it (a teacher); anything
    else gets a fresh head of the right kind and size.
    """
    if task.kind == "text":
        raise ConfigError(f"task {task.name!r} is raw text: it has no labels to fine-tune on")
    labels = list(task.label_names) if task.label_names else None
    model = load_pretrained(model_name, head_kind="auto")
    head = model.config.head
    if head.kind != task.kind or head.num_labels != task.num_labels:
        model = load_pretrained(
            model_name, head_kind=task.kind, num_labels=task.num_labels, label_names=labels
        )
    return model, load_tokenizer(model_name)


def task_of_folder(folder: str | Path) -> str | None:
    """The task a saved gearshift model was trained on (recorded in gearshift.json), if any."""
    path = Path(folder)
    if not (path / "gearshift.json").is_file():
        return None
    return read_meta(path).get("task", {}).get("name")


def custom_task_of_folder(folder: str | Path) -> str | None:
    """Register the custom task a saved model was trained on (if any); returns its name."""
    from gearshift.data import CustomTaskConfig, make_custom_task

    path = Path(folder)
    if not (path / "gearshift.json").is_file():
        return None
    custom = read_meta(path).get("task", {}).get("custom")
    if not custom:
        return None
    return make_custom_task(CustomTaskConfig.from_dict(custom)).name


@dataclass
class TaskData:
    """A task's split, read and tokenized once: examples, encoded features, a collator."""

    task: TaskSpec
    split: str
    examples: list
    features: list[dict]
    collator: Callable

    @classmethod
    def load(
        cls,
        task: TaskSpec,
        tokenizer,
        split: str,
        limit: int | None = None,
        max_length: int = 128,
        data_dir: str | None = None,
    ) -> TaskData:
        examples = load_examples(task, split, data_dir=data_dir, limit=limit)
        features = encode_examples(examples, tokenizer, task, max_length=max_length)
        return cls(task, split, examples, features, make_collator(tokenizer, task))

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0):
        return make_dataloader(
            self.features, self.collator, batch_size=batch_size, shuffle=shuffle, seed=seed
        )


# ---------------------------------------------------------------------- evaluation
@torch.inference_mode()
def predict(
    model: torch.nn.Module, data: TaskData, batch_size: int = 64, **forward_kwargs
) -> tuple[list, list]:
    """Run ``model`` over ``data``; returns (predictions, references) in the metric's format.

    Classification: class ids; regression: floats; token classification: per-example lists
    of tag ids over the first sub-token of each word (labels != -100).
    """
    model.eval()
    preds: list = []
    refs: list = []
    kind = data.task.kind
    for batch in data.loader(batch_size):
        labels = batch.pop("labels")
        logits = model(**batch, **forward_kwargs).logits
        if kind == "classification":
            preds.extend(logits.argmax(-1).tolist())
            refs.extend(labels.tolist())
        elif kind == "regression":
            preds.extend(logits.float().reshape(-1).tolist())
            refs.extend(labels.float().reshape(-1).tolist())
        else:
            ids = logits.argmax(-1)
            for p, y in zip(ids, labels):
                keep = y != -100
                preds.append(p[keep].tolist())
                refs.append(y[keep].tolist())
    return preds, refs


def evaluate(
    model: torch.nn.Module, data: TaskData, batch_size: int = 64, **forward_kwargs
) -> dict[str, float]:
    """The task's official metrics (points, 0-100) of ``model`` on ``data``."""
    preds, refs = predict(model, data, batch_size, **forward_kwargs)
    metrics = compute_metrics(data.task, preds, refs)
    metrics["examples"] = len(refs)
    return metrics


# ---------------------------------------------------------------------- fine-tuning
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
    task_info = {"name": task.name, "kind": task.kind, "label_names": list(task.label_names or [])}
    if task.custom is not None:  # so `gearshift evaluate --model DIR` finds the user's files again
        task_info["custom"] = task.custom.to_dict()
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


# ---------------------------------------------------------------------- profiling
def dev_texts(
    task: TaskSpec, limit: int | None = None, data_dir: str | None = None
) -> list[str | tuple[str, str]]:
    """Real dev inputs for measurement: a text, or a (text, text pair) tuple for pair tasks."""
    examples = load_examples(task, "dev", data_dir=data_dir, limit=limit)
    return [e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in examples]


def profile(
    model: Transformer,
    tokenizer,
    task: TaskSpec,
    limit: int = 256,
    threads: int | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Parameters, FLOPs per example (dynamic and at length 128), latency (batch 1, 32),
    peak memory, measured on ``limit`` real dev inputs of ``task``."""
    from gearshift.measure import profile_model

    texts = dev_texts(task, limit, data_dir)
    return profile_model(model, tokenizer, texts, threads=threads)


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


# ---------------------------------------------------------------------- the demo
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
    print(
        f"[demo] fine-tuning {model_name} on {task.name} ({train_limit} training examples, {epochs} epoch)"
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
    print(
        f"[demo] teacher dev {ft.metric} = {ft.score:.2f} ({ft.train_seconds:.0f} s, {ft.steps} steps)"
    )
    teacher = load_pretrained(str(ft.model_dir))
    tokenizer = load_tokenizer(str(ft.model_dir))
    dev = TaskData.load(task, tokenizer, "dev", dev_limit)
    print("[demo] profiling the teacher on real dev sentences")
    prof = profile(teacher, tokenizer, task, limit=profile_limit, threads=threads)
    command = (
        ("gearshift demo " + " ".join(shlex.quote(a) for a in sys.argv[2:])).strip()
        if sys.argv[1:2] == ["demo"]
        else "gearshift.jobs.demo()"
    )
    row = teacher_row(task, model_name, ft.score, prof, command)
    ctx = DemoContext(
        model_name, task, teacher, tokenizer, dev, output_dir, threads, ft.score, rows=[row]
    )
    for name, stage in DEMO_STAGES + method_demo_stages():
        if stages is not None and name not in stages:
            continue
        print(f"[demo] stage: {name}")
        ctx.rows.extend(stage(ctx))
    table = markdown_table(ctx.rows)
    (output_dir / "operating_points.json").write_text(json.dumps(ctx.rows, indent=2))
    (output_dir / "operating_points.md").write_text(table + "\n")
    print("\nOperating points (" + task.name + ", dev):\n")
    print(table)
    print(f"\n[demo] written to {output_dir}/operating_points.{{json,md}}")
    return ctx.rows


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
