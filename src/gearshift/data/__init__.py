"""gearshift.data: tasks, readers, encoding, batching and metrics.

Typical use::

    from gearshift.data import (compute_metrics, encode_examples, get_task, load_examples,
                                make_collator, make_dataloader)

    task = get_task("rte")
    examples = load_examples(task, "dev")
    features = encode_examples(examples, tokenizer, task, max_length=128)
    loader = make_dataloader(features, make_collator(tokenizer, task), batch_size=32)
    scores = compute_metrics(task, logits, labels)  # {"accuracy": 71.5}, in points

The registry and readers import quickly; the encoding and metric functions (which need torch,
transformers, scikit-learn, SciPy and seqeval) are imported on first use, so that listing tasks
or checking a data file from the command line stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gearshift.data.custom import CustomTaskConfig, load_custom, make_custom_task
from gearshift.data.example import Example
from gearshift.data.load import load_examples
from gearshift.data.tasks import (
    CONLL2003_LABELS,
    IGNORE_INDEX,
    TaskSpec,
    find_task,
    get_task,
    list_tasks,
    normalize_split,
    register_task,
)
from gearshift.data.text import iter_texts, split_sentences

if TYPE_CHECKING:
    from gearshift.data.encode import (
        align_word_labels,
        encode_examples,
        make_collator,
        make_dataloader,
    )
    from gearshift.data.metrics import compute_metrics, constant_score

_LAZY = {
    "align_word_labels": "gearshift.data.encode",
    "encode_examples": "gearshift.data.encode",
    "make_collator": "gearshift.data.encode",
    "make_dataloader": "gearshift.data.encode",
    "compute_metrics": "gearshift.data.metrics",
    "constant_score": "gearshift.data.metrics",
}


def __getattr__(name: str) -> Any:
    """Return a lazily imported public name (see ``_LAZY``)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gearshift.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CONLL2003_LABELS",
    "IGNORE_INDEX",
    "CustomTaskConfig",
    "Example",
    "TaskSpec",
    "align_word_labels",
    "compute_metrics",
    "constant_score",
    "encode_examples",
    "find_task",
    "get_task",
    "iter_texts",
    "list_tasks",
    "load_custom",
    "load_examples",
    "make_collator",
    "make_custom_task",
    "make_dataloader",
    "normalize_split",
    "register_task",
    "split_sentences",
]
