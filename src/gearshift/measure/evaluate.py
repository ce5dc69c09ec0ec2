"""Scoring a model on a task split: predictions in the metric's format and the task's
official metrics."""

from __future__ import annotations

import torch

from gearshift.data.taskdata import TaskData


@torch.inference_mode()
def predict_task(
    model: torch.nn.Module,
    data: TaskData,
    batch_size: int = 64,
    progress: bool = False,
    **forward_kwargs,
) -> tuple[list, list]:
    """Run ``model`` over ``data``; returns (predictions, references) in the metric's format.

    Classification: class ids; regression: floats; token classification: per-example lists
    of tag ids over the first sub-token of each word (labels != -100). ``progress`` shows
    a tqdm bar. For label names and probabilities on unlabeled texts use
    :func:`gearshift.predict`.
    """
    from tqdm.auto import tqdm

    model.eval()
    preds: list = []
    refs: list = []
    kind = data.task.kind
    bar = tqdm(total=len(data.features), desc="evaluate", unit="ex", disable=not progress)
    for batch in data.loader(batch_size):
        bar.update(int(batch["input_ids"].shape[0]))
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
    bar.close()
    return preds, refs


def evaluate(
    model: torch.nn.Module,
    data: TaskData,
    batch_size: int = 64,
    progress: bool = False,
    **forward_kwargs,
) -> dict[str, float]:
    """Return the task's official metrics (points, 0-100) of ``model`` on ``data``, plus
    ``examples`` (how many were scored)."""
    from gearshift.data.metrics import compute_metrics

    preds, refs = predict_task(model, data, batch_size, progress, **forward_kwargs)
    metrics = compute_metrics(data.task, preds, refs)
    metrics["examples"] = len(refs)
    return metrics
