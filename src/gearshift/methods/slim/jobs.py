"""End-to-end jobs: the COST-EFF pipeline on a task, exits on a frozen backbone (DeeBERT),
and the dev-set sweep of a multi-exit model. Used by ``gearshift slim`` and the benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gearshift.data import get_task
from gearshift.errors import ConfigError

from .criteria import Criterion, Entropy, Patience
from .measure import record_exits, sweep
from .model import ExitConfig, MultiExitModel, load_multi_exit
from .train import SlimConfig, distil_stage, run_slim, stage_done


def task_and_teacher(model_dir: str, task_name: str | None):
    from gearshift.data.recorded import model_for_task, task_of_folder

    name = task_name or task_of_folder(model_dir)
    if name is None:
        raise ConfigError(f"{model_dir} records no task: pass --task NAME")
    task = get_task(name)
    if task.kind not in ("classification", "regression"):
        raise ConfigError(
            f"task {task.name} is {task.kind}: multi-exit models need sequence classification "
            "or regression"
        )
    teacher, tokenizer = model_for_task(model_dir, task)
    return task, teacher.eval(), tokenizer


# How far apart two successive regression exits may be and still "agree" (label units; STS-B
# spans 0-5). Patience alone barely moves a regression model off its last layer (patience 1
# at tolerance 0.1 still runs 4.5 of 6 layers on STS-B), so the sweep widens the tolerance.
REGRESSION_TOLERANCES = (0.1, 0.25, 0.5, 1.0)


def criteria_for(
    task: Any,
    thresholds: Sequence[float],
    num_layers: int,
    tolerances: Sequence[float] = REGRESSION_TOLERANCES,
) -> list[Criterion]:
    """Entropy thresholds (classification); patience 1..L-1 (classification too, as the PABEE
    comparison), for regression at each of ``tolerances``."""
    if task.kind == "regression":
        return [Patience(t, tolerance=tol) for tol in tolerances for t in range(1, num_layers)]
    return [Entropy(t) for t in thresholds] + [Patience(t) for t in range(1, num_layers)]


def evaluate_exits(
    model: MultiExitModel,
    task: Any,
    tokenizer: Any,
    thresholds,
    dev_limit=None,
    data_dir=None,
    tolerances: Sequence[float] = REGRESSION_TOLERANCES,
) -> list[dict]:
    from gearshift.data.taskdata import TaskData

    dev = TaskData.load(task, tokenizer, "dev", dev_limit, data_dir=data_dir)
    recorded = record_exits(model, dev)
    criteria = criteria_for(task, thresholds, model.num_exits, tolerances)
    rows = sweep(model, recorded, task, criteria)
    full = sweep(model, recorded, task, [Criterion()])[0]
    full["criterion"] = "no early exit"
    return [full] + rows


def slim_job(
    model_dir: str,
    task_name: str | None,
    output_dir: str | Path,
    config: SlimConfig,
    train_limit: int | None = None,
    dev_limit: int | None = None,
    thresholds: Sequence[float] = (0.1,),
    data_dir: str | None = None,
    progress: bool = True,
    tolerances: Sequence[float] = REGRESSION_TOLERANCES,
) -> dict[str, Any]:
    """Run the pipeline on the teacher in ``model_dir`` and sweep the final model's exits."""
    from gearshift.data.taskdata import TaskData

    task, teacher, tokenizer = task_and_teacher(model_dir, task_name)
    train = TaskData.load(task, tokenizer, "train", train_limit, data_dir=data_dir)
    meta = {
        "task": {"name": task.name, "kind": task.kind, "label_names": list(task.label_names or [])},
        "teacher": str(model_dir),
    }
    stages = run_slim(
        teacher, train.features, train.collator, config, output_dir, tokenizer, meta, progress
    )
    final = load_multi_exit(stages[-1].model_dir)
    return {
        "stages": [{"name": s.name, "model": str(s.model_dir), "widths": s.widths} for s in stages],
        "sweep": evaluate_exits(
            final, task, tokenizer, thresholds, dev_limit, data_dir, tolerances
        ),
    }


def deebert_job(
    model_dir: str,
    task_name: str | None,
    output_dir: str | Path,
    config: SlimConfig,
    train_limit: int | None = None,
    progress: bool = True,
    data_dir: str | None = None,
) -> Path:
    """The DeeBERT baseline: exits trained on the frozen teacher (KD from its final logits);
    the backbone and the final head stay the teacher's."""
    from gearshift.data.taskdata import TaskData

    task, teacher, tokenizer = task_and_teacher(model_dir, task_name)
    train = TaskData.load(task, tokenizer, "train", train_limit, data_dir=data_dir)
    out = Path(output_dir)
    if not stage_done(out):
        import copy

        import torch

        torch.manual_seed(config.seed)  # the exits' initial weights
        student = MultiExitModel(
            copy.deepcopy(teacher),
            ExitConfig(config.exit_pooler, config.exit_dropout, config.exit_pool),
        )
        meta = {
            "task": {
                "name": task.name,
                "kind": task.kind,
                "label_names": list(task.label_names or []),
            },
            "stage": "deebert",
        }
        distil_stage(
            student,
            teacher,
            train.features,
            train.collator,
            config,
            out,
            config.ta_steps,
            tokenizer=tokenizer,
            meta=meta,
            train_backbone=False,
            progress=progress,
        )
    return out / "model"


def truncate_layers(model: Any, num_layers: int) -> Any:
    """A copy of ``model`` with only its first ``num_layers`` layers (embeddings and head
    kept): the baseline a user might try instead of early exit."""
    import copy

    from gearshift.runtime.config import ModelConfig
    from gearshift.runtime.model import Transformer

    cfg = model.config
    if not 1 <= num_layers <= cfg.num_layers:
        raise ConfigError(f"cannot keep {num_layers} of {cfg.num_layers} layers")
    used = sorted(set(cfg.layer_to_block[:num_layers]))
    new_cfg = ModelConfig.from_dict(copy.deepcopy(cfg.to_dict()))
    new_cfg.num_layers = num_layers
    new_cfg.blocks = [cfg.blocks[b] for b in used]
    new_cfg.layer_to_block = [used.index(b) for b in cfg.layer_to_block[:num_layers]]
    new = Transformer(new_cfg)
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("blocks."):
            b = int(k.split(".")[1])
            if b not in used:
                continue
            k = f"blocks.{used.index(b)}." + k.split(".", 2)[2]
        state[k] = v
    new.load_state_dict(state)
    return new.train(model.training)
