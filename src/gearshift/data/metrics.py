"""Task scores, in points (0-100), computed with scikit-learn, SciPy and seqeval.

Which scores a task reports, and which one ranks checkpoints, is set in its TaskSpec
(:mod:`gearshift.data.tasks`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from seqeval.metrics import accuracy_score as seq_accuracy
from seqeval.metrics import f1_score as seq_f1
from seqeval.metrics import precision_score as seq_precision
from seqeval.metrics import recall_score as seq_recall
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from gearshift.data.tasks import IGNORE_INDEX, TaskSpec, get_task
from gearshift.errors import DataError


def compute_metrics(task: str | TaskSpec, predictions: Any, references: Any) -> dict[str, float]:
    """Return ``{metric name: score in points}`` for the task's ``metrics``.

    * classification: ``predictions`` are class ids ``(n,)`` or logits ``(n, num_labels)``
      (arg-maxed); ``references`` class ids. F1 is that of label id 1 (binary tasks), or the
      unweighted mean over classes for ``macro_f1``.
    * regression: float predictions ``(n,)`` or ``(n, 1)``; Pearson and Spearman correlation.
      A constant prediction or reference has no correlation and scores 0.
    * token classification: per-token ids ``(n, seq)`` or logits ``(n, seq, num_labels)``,
      padded or as ragged lists; ``references`` per-token ids with -100 where no label
      applies (those positions are dropped). Ids become tag strings and seqeval gives
      entity-level micro ``f1``, ``precision``, ``recall``, plus token ``accuracy``.
    """
    spec = get_task(task)
    if spec.kind == "classification":
        preds, refs = _class_ids(predictions, references)
        scores = {
            "accuracy": lambda: accuracy_score(refs, preds),
            "f1": lambda: f1_score(refs, preds, pos_label=1, average="binary", zero_division=0),
            "macro_f1": lambda: f1_score(refs, preds, average="macro", zero_division=0),
            "matthews": lambda: matthews_corrcoef(refs, preds),
        }
    elif spec.kind == "regression":
        preds_f, refs_f = _floats(predictions, references)
        scores = {
            "pearson": lambda: _correlation(pearsonr, preds_f, refs_f),
            "spearman": lambda: _correlation(spearmanr, preds_f, refs_f),
        }
    elif spec.kind == "token_classification":
        assert spec.label_names is not None
        pred_tags, ref_tags = _tag_sequences(predictions, references, spec.label_names)
        scores = {
            "f1": lambda: seq_f1(ref_tags, pred_tags, zero_division=0),
            "precision": lambda: seq_precision(ref_tags, pred_tags, zero_division=0),
            "recall": lambda: seq_recall(ref_tags, pred_tags, zero_division=0),
            "accuracy": lambda: seq_accuracy(ref_tags, pred_tags),
        }
    else:
        raise DataError(f"task {spec.name!r} ({spec.kind}) has no metrics; rank it by loss")
    unknown = [name for name in spec.metrics if name not in scores]
    if unknown:
        raise DataError(
            f"task {spec.name!r} asks for metric(s) {', '.join(unknown)}, which a "
            f"{spec.kind} task cannot compute; known: {', '.join(scores)}"
        )
    return {name: 100.0 * float(scores[name]()) for name in spec.metrics}


def constant_score(task: str | TaskSpec, references: Any) -> float:
    """The best main-metric score (points) that one constant prediction gets on ``references``.

    The floor a model must clear to carry any information: the majority class's accuracy,
    the F1 of always answering the positive class, 0 for Matthews correlation and for the
    correlations of a regression task (a constant has none). Classification tries every
    class; token classification has no such floor and is refused.
    """
    spec = get_task(task)
    main = spec.main_metric
    if spec.kind == "classification":
        refs = np.asarray(references).reshape(-1).astype(np.int64)
        if len(refs) == 0:
            raise DataError(f"{spec.name}: no references to score a constant prediction on")
        return max(
            compute_metrics(spec, np.full_like(refs, c), refs)[main] for c in range(spec.num_labels)
        )
    if spec.kind == "regression":
        return 0.0
    raise DataError(
        f"task {spec.name!r} ({spec.kind}) has no constant-prediction floor; "
        "use it with classification or regression tasks"
    )


def _class_ids(predictions: Any, references: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return (predicted ids, reference ids) as 1-D int arrays of equal length."""
    preds = np.asarray(predictions)
    if preds.ndim == 2:
        preds = preds.argmax(axis=-1)
    refs = np.asarray(references).reshape(-1).astype(np.int64)
    preds = preds.reshape(-1).astype(np.int64)
    _check_lengths(len(preds), len(refs))
    return preds, refs


def _floats(predictions: Any, references: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return (predictions, references) as 1-D float arrays of equal length."""
    preds = np.asarray(predictions, dtype=np.float64)
    if preds.ndim == 2 and preds.shape[1] == 1:
        preds = preds[:, 0]
    refs = np.asarray(references, dtype=np.float64).reshape(-1)
    if preds.ndim != 1:
        raise ValueError(f"regression predictions must be (n,) or (n, 1), got {preds.shape}")
    _check_lengths(len(preds), len(refs))
    return preds, refs


def _correlation(function: Any, preds: np.ndarray, refs: np.ndarray) -> float:
    """Return the correlation statistic, or 0.0 when either side is constant (undefined)."""
    if len(preds) < 2 or np.ptp(preds) == 0 or np.ptp(refs) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(function(preds, refs)[0])
    return value if np.isfinite(value) else 0.0


def _tag_sequences(
    predictions: Any, references: Any, label_names: Sequence[str]
) -> tuple[list[list[str]], list[list[str]]]:
    """Return (predicted tags, reference tags) per sentence, dropping -100 positions."""
    if len(predictions) != len(references):
        _check_lengths(len(predictions), len(references))
    pred_tags: list[list[str]] = []
    ref_tags: list[list[str]] = []
    for pred_row, ref_row in zip(predictions, references):
        pred = np.asarray(pred_row)
        ref = np.asarray(ref_row).reshape(-1)
        if pred.ndim == 2:
            pred = pred.argmax(axis=-1)
        pred = pred.reshape(-1)
        if len(pred) < len(ref):
            raise ValueError(
                f"a sentence has {len(ref)} reference tokens but only {len(pred)} predictions"
            )
        keep = ref != IGNORE_INDEX
        pred_tags.append([label_names[int(i)] for i in pred[: len(ref)][keep]])
        ref_tags.append([label_names[int(i)] for i in ref[keep]])
    return pred_tags, ref_tags


def _check_lengths(n_predictions: int, n_references: int) -> None:
    if n_predictions != n_references:
        raise ValueError(
            f"{n_predictions} predictions but {n_references} references; they must match"
        )
