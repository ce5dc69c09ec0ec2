"""Score/FLOPs curves of multi-exit models from one pass over the dev set.

:func:`record_exits` runs the dev set once and keeps every exit's logits; :func:`sweep`
replays exit criteria on them (:func:`~gearshift.methods.slim.criteria.simulate`) and
reports, per criterion, the task score and the mean FLOPs per example, each example charged
for the layers and exits it ran at its own length (:func:`exit_flops`, closed form; a test
checks it against FLOPs counted on the real batched early-exit run).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gearshift.data import compute_metrics
from gearshift.measure.flops import _head_flops, analytic_flops, model_inputs
from gearshift.runtime.config import ModelConfig

from .criteria import Criterion, simulate
from .model import ExitConfig, MultiExitModel


def exit_head_flops(config: ModelConfig, exit_config: ExitConfig) -> int:
    d = config.hidden_size
    out = 1 if config.head.kind == "regression" else config.head.num_labels
    return (2 * d * d if exit_config.pooler == "dense" else 0) + 2 * d * out


def exit_flops(model: MultiExitModel, seq_len: int) -> list[int]:
    """FLOPs of one example of length ``seq_len`` that leaves after layer l, for each l:
    embeddings, layers 0..l, and the exits evaluated (exits 0..l; the head at the last)."""
    cfg = model.config
    body = copy.deepcopy(cfg)
    body.head.kind = None
    per_exit = exit_head_flops(cfg, model.exit_config)
    out = []
    for layer in range(cfg.num_layers):
        body.num_layers = layer + 1
        body.layer_to_block = cfg.layer_to_block[: layer + 1]
        cost = analytic_flops(body, seq_len)
        if layer < cfg.num_layers - 1:
            cost += (layer + 1) * per_exit
        else:
            cost += (layer) * per_exit + _head_flops(cfg, seq_len)
        out.append(int(cost))
    return out


@dataclass
class Recorded:
    """Every exit's logits on a dataset: ``logits`` (N, L, C), labels, real lengths."""

    logits: torch.Tensor
    labels: np.ndarray
    lengths: np.ndarray


@torch.inference_mode()
def record_exits(model: MultiExitModel, data: Any, batch_size: int = 64) -> Recorded:
    """Run ``data`` (:class:`gearshift.data.taskdata.TaskData`) once through every exit."""
    model.eval()
    logits, labels, lengths = [], [], []
    for batch in data.loader(batch_size):
        inputs = model_inputs(batch)
        out = model.forward_all(**inputs)
        logits.append(torch.stack(out.exit_logits, dim=1).float())
        labels.append(batch["labels"].numpy())
        lengths.append(inputs["attention_mask"].sum(1).numpy())
    return Recorded(torch.cat(logits), np.concatenate(labels), np.concatenate(lengths))


def sweep(
    model: MultiExitModel,
    recorded: Recorded,
    task: Any,
    criteria: Sequence[Criterion],
) -> list[dict[str, Any]]:
    """For each criterion: score (the task's main metric), mean FLOPs per example, and the
    share of examples leaving at each exit."""
    table = {int(n): exit_flops(model, int(n)) for n in np.unique(recorded.lengths)}
    L = recorded.logits.shape[1]
    rows = []
    for crit in criteria:
        sim = simulate(crit, recorded.logits)
        layers = sim.exit_layer.numpy()
        preds = sim.logits.numpy()  # (N, C) logits, or (N,) regression predictions
        metrics = compute_metrics(task, preds, recorded.labels)
        flops = np.mean([table[int(n)][int(e)] for n, e in zip(recorded.lengths, layers)])
        rows.append(
            {
                "criterion": crit.describe(),
                "score": metrics[task.main_metric],
                "flops": float(flops),
                "mean_exit_layer": float(layers.mean() + 1),
                "exit_share": [float((layers == l).mean()) for l in range(L)],  # noqa: E741
            }
        )
    return rows
