"""End-to-end jobs for the CLI and the benchmark: make a shared model and distil it, fine-tune
with step-aware batches, pre-train a small decoder, and score a model at several step counts.
Every job that trains resumes from its output folder (``resume=True``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gearshift.data import get_task
from gearshift.data.raw import pack_sentences, raw_texts, text_features
from gearshift.errors import ConfigError
from gearshift.measure import flops_at_length
from gearshift.runtime import Transformer, load_pretrained, load_tokenizer
from gearshift.runtime.io import save_model
from gearshift.train import TrainConfig, Trainer

from .decoder import (
    collate_blocks,
    decoder_config,
    init_weights,
    lm_blocks,
    perplexity,
    step_aware_loss,
    train_tokenizer,
)
from .model import layer_evaluations, step_plan
from .share import distil_shared, make_shared


def share_model(
    model_name: str,
    output_dir: str | Path,
    groups: int = 1,
    init: str = "mean",
    step_sizes: Sequence[float] = (1.0,),
    layerwise: bool = False,
    layer_norms: bool = False,
    text: str | None = "wikitext2",
    task: str | None = None,
    train_limit: int | None = None,
    max_length: int = 128,
    train_config: TrainConfig | None = None,
    resume: bool = False,
    data_dir: str | None = None,
    eval_texts: int = 0,
    per_group_steps: bool = False,
) -> Path:
    """Make a shared copy of ``model_name`` and distil it on raw text; returns the folder of
    the result (``<output_dir>/model``). Without ``train_config`` the shared model is saved
    as initialised, with no distillation. ``eval_texts > 0``: that many held-out passages of
    WikiText-2 *test* (the training text is its valid split) measure the student's fidelity
    to the teacher at a = 1 and 2 every ``train_config.eval_every`` steps (``log.jsonl``).
    ``per_group_steps``: each group of shared layers draws its own step size per batch."""
    teacher = load_pretrained(model_name, head_kind=None).eval()
    tokenizer = load_tokenizer(model_name)
    student = make_shared(teacher, groups=groups, init=init, layer_norms=layer_norms)
    output_dir = Path(output_dir)
    extra = {"from": model_name, "groups": groups, "init": init, "layer_norms": layer_norms}
    if train_config is None:
        return save_model(student, output_dir / "model", tokenizer, {"shared": extra})
    config = train_config
    config.output_dir = str(output_dir)
    # paragraphs packed into passages of at most ~80 words: WikiText's long paragraphs are
    # used in full instead of being cut at max_length
    texts = pack_sentences(raw_texts(text, task, None, data_dir))
    texts = texts[:train_limit] if train_limit else texts
    features, collate = text_features(tokenizer, texts, max_length)
    eval_batches = None
    if eval_texts > 0:
        held_out, _ = text_features(
            tokenizer, pack_sentences(_test_text(data_dir))[:eval_texts], max_length
        )
        eval_batches = [collate(held_out[i : i + 32]) for i in range(0, len(held_out), 32)]
    res = distil_shared(
        student,
        teacher,
        features,
        collate,
        config,
        step_sizes=step_sizes,
        layerwise=layerwise,
        per_group=per_group_steps,
        tokenizer=tokenizer,
        extra=extra,
        resume=resume,
        eval_batches=eval_batches,
    )
    return res.model_dir


def finetune_steps(
    model_name: str,
    task_name: str,
    output_dir: str | Path,
    step_sizes: Sequence[float] = (1.0,),
    train_config: TrainConfig | None = None,
    train_limit: int | None = None,
    dev_limit: int | None = None,
    resume: bool = False,
    per_group_steps: bool = False,
):
    """Fine-tune (the shared) ``model_name`` on a task; with ``step_sizes`` each batch runs
    at a step size drawn from the set (``per_group_steps``: one per group of shared layers).
    Model selection scores dev at step 1."""
    from gearshift.train.finetune import finetune

    return finetune(
        model_name,
        task_name,
        output_dir,
        train_config,
        train_limit,
        dev_limit,
        resume=resume,
        loss_fn=(
            step_aware_loss(step_sizes, per_group_steps) if tuple(step_sizes) != (1.0,) else None
        ),
        extra={
            "step_aware": {
                "step_sizes": [float(a) for a in step_sizes],
                "per_group_steps": per_group_steps,
            }
        },
    )


def pretrain_decoder(
    output_dir: str | Path,
    tokenizer_name: str | None = None,
    groups: int | None = None,
    step_sizes: Sequence[float] = (1.0,),
    block_size: int = 128,
    train_limit: int | None = None,
    train_config: TrainConfig | None = None,
    model_kwargs: dict[str, Any] | None = None,
    resume: bool = False,
    data_dir: str | None = None,
    per_group_steps: bool = False,
) -> Path:
    """Pre-train a small GPT-2-style decoder from scratch on WikiText-2's validation text
    (the data folder has no train split; perplexity is measured on its test split), unshared
    or with ``groups`` shared groups, naive (``step_sizes=(1,)``) or step-aware. The
    tokenizer is ``tokenizer_name``'s, or (None) an 8k byte-level BPE trained on the same
    text and saved with the model. Returns the model folder ``<output_dir>/model``."""
    texts = raw_texts("wikitext2", None, None, data_dir)
    tokenizer = load_tokenizer(tokenizer_name) if tokenizer_name else train_tokenizer(texts, 8192)
    cfg = decoder_config(
        tokenizer.vocab_size,
        groups=groups,
        max_positions=max(block_size, 256),
        pad_token_id=tokenizer.pad_token_id,
        **(model_kwargs or {}),
    )
    torch.manual_seed(train_config.seed if train_config else 42)
    model = init_weights(Transformer(cfg))
    blocks = lm_blocks(tokenizer, texts, block_size)
    if train_limit:
        blocks = blocks[:train_limit]
    output_dir = Path(output_dir)
    config = train_config or TrainConfig(output_dir=str(output_dir))
    config.output_dir = str(output_dir)
    meta = {
        "decoder": {
            "groups": groups,
            "step_sizes": [float(a) for a in step_sizes],
            "per_group_steps": per_group_steps,
            "text": "wikitext2 valid",
            "block_size": block_size,
            "tokenizer": tokenizer_name or "byte-level BPE 8192, trained on the same text",
        }
    }
    trainer = Trainer(
        model,
        blocks,
        config,
        loss_fn=step_aware_loss(step_sizes, per_group_steps),
        collate_fn=collate_blocks,
        save_model_fn=lambda m, path: save_model(m, path, tokenizer, meta),
    )
    trainer.fit(resume=resume)
    return save_model(model.eval(), output_dir / "model", tokenizer, meta)


def score_at_steps(
    model: Transformer,
    data: Any,
    n_steps: int | None,
    solver: str = "euler",
) -> tuple[float, str]:
    """(score, metric) of ``model`` at ``n_steps`` (None: its own layers): the task's main
    metric for task data (:class:`gearshift.data.taskdata.TaskData`), perplexity for LM blocks."""
    from gearshift.data.taskdata import TaskData
    from gearshift.measure.evaluate import evaluate

    plan = None if n_steps is None else step_plan(model.config, n_steps, solver=solver)
    if isinstance(data, TaskData):
        metric = data.task.main_metric
        return evaluate(model, data, plan=plan)[metric], metric
    return perplexity(model, data, plan=plan), "perplexity"


def evaluate_steps(
    model_dir: str,
    steps: Sequence[int],
    solvers: Sequence[str] = ("euler",),
    task_name: str | None = None,
    limit: int | None = None,
    data_dir: str | None = None,
) -> list[dict[str, Any]]:
    """Score ``model_dir`` at each number of steps and solver: one dict per setting with the
    score, block evaluations and FLOPs per example at length 128."""
    from gearshift.data.recorded import task_of_folder
    from gearshift.data.taskdata import TaskData

    model = load_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    if model.config.head.kind == "lm":
        data = lm_blocks(tokenizer, _test_text(data_dir), 128)
        data = data[:limit] if limit else data
    else:
        name = task_name or task_of_folder(model_dir)
        if name is None:
            raise ConfigError(f"{model_dir} records no task: pass --task NAME")
        data = TaskData.load(get_task(name), tokenizer, "dev", limit, data_dir=data_dir)
    rows = []
    for solver in solvers:
        for n in steps:
            plan = step_plan(model.config, n, solver=solver)
            score, metric = score_at_steps(model, data, n, solver)
            rows.append(
                {
                    "steps": n,
                    "solver": solver,
                    "step_sizes": [s.step_size for s in plan.steps],
                    "metric": metric,
                    "score": score,
                    "block_evaluations": layer_evaluations(plan.steps, solver),
                    "flops_128": flops_at_length(model, 128, plan=plan),
                }
            )
    return rows


def _test_text(data_dir: str | None) -> list[str]:
    from gearshift.data import iter_texts, load_examples

    return list(iter_texts(load_examples("wikitext2", "test", data_dir=data_dir)))
