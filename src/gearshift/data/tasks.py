"""The task registry: what each task is, how it is scored, and where its data comes from.

Every task gearshift knows (the GLUE tasks, CoNLL-2003 NER, WikiText-2) is a :class:`TaskSpec`
registered here; a user's own data set becomes one through :mod:`gearshift.data.custom`, and
later code can add more with :func:`register_task`.

Scores are always in points (0-100). The ``main_metric`` of each task is the score used to rank
checkpoints:

* CoLA: ``matthews`` (Matthews correlation, the official GLUE metric); accuracy is also reported.
* SST-2, QNLI, RTE, MNLI, MNLI-mm: ``accuracy``.
* MRPC, QQP: ``f1`` (F1 of the positive class); accuracy is also reported. GLUE's leaderboard
  shows both; we rank by F1 alone rather than by an average of the two.
* STS-B: ``pearson``; Spearman correlation is also reported.
* CoNLL-2003: ``f1`` (seqeval entity-level micro F1); precision and recall are also reported.
* WikiText-2 (raw text for distillation corpora): no metric; ``main_metric`` is ``loss`` and
  lower is better.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from gearshift.errors import DataError

if TYPE_CHECKING:
    from gearshift.data.custom import CustomTaskConfig
    from gearshift.data.example import Example

TaskKind = Literal["classification", "regression", "token_classification", "text"]
TASK_KINDS: tuple[str, ...] = ("classification", "regression", "token_classification", "text")

#: A reader for tasks added later: ``loader(spec, split, data_dir) -> list[Example]``.
Loader = Callable[["TaskSpec", str, Path | None], list["Example"]]

#: Label id of positions the loss and metrics ignore (sub-tokens after a word's first, specials).
IGNORE_INDEX = -100

#: The 9 CoNLL-2003 IOB2 tags, in the order of the Hugging Face ``conll2003`` data set.
CONLL2003_LABELS: tuple[str, ...] = (
    "O",
    "B-PER",
    "I-PER",
    "B-ORG",
    "I-ORG",
    "B-LOC",
    "I-LOC",
    "B-MISC",
    "I-MISC",
)


@dataclass(frozen=True)
class TaskSpec:
    """Everything gearshift needs to know about one task.

    Attributes:
        name: canonical lower-case name (``"sst2"``, ``"conll2003"``, ...).
        kind: ``"classification"``, ``"regression"``, ``"token_classification"`` or ``"text"``.
        label_names: class or tag names, index = label id; None for regression and text.
        metrics: the score names :func:`gearshift.data.compute_metrics` returns for this task.
        main_metric: the score used to rank checkpoints (one of ``metrics``, or ``"loss"``).
        greater_is_better: whether a larger ``main_metric`` is better.
        source: which reader loads it: ``"glue"``, ``"conll2003"``, ``"wikitext2"``,
            ``"custom"``, or ``"loader"`` for a task registered with its own ``loader``.
        description: one line for listings and help.
        custom: the user's file settings, for ``source == "custom"``.
        loader: the reader for ``source == "loader"``.
    """

    name: str
    kind: TaskKind
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    greater_is_better: bool = True
    source: str = "loader"
    description: str = ""
    custom: CustomTaskConfig | None = field(default=None, compare=False)
    loader: Loader | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise DataError(
                f"task {self.name!r}: kind must be one of {', '.join(TASK_KINDS)}, got {self.kind!r}"
            )
        if self.kind in ("classification", "token_classification") and not self.label_names:
            raise DataError(f"task {self.name!r} ({self.kind}) needs label_names")
        if self.label_names is not None and not isinstance(self.label_names, tuple):
            object.__setattr__(self, "label_names", tuple(self.label_names))
        if self.main_metric not in self.metrics and self.main_metric != "loss":
            raise DataError(
                f"task {self.name!r}: main_metric {self.main_metric!r} is not one of its "
                f"metrics ({', '.join(self.metrics) or 'none'})"
            )

    @property
    def num_labels(self) -> int:
        """Return the size of the model's output: number of classes/tags, 1 for regression,
        0 for raw text (no task head)."""
        if self.kind == "regression":
            return 1
        if self.kind == "text":
            return 0
        assert self.label_names is not None
        return len(self.label_names)

    @property
    def is_pair(self) -> bool | None:
        """Return whether the task's inputs are sentence pairs (None when unknown)."""
        if self.source == "glue":
            return self.name not in ("sst2", "cola")
        if self.custom is not None:
            return self.custom.text_pair_column is not None
        return False if self.kind in ("token_classification", "text") else None

    def id2label(self) -> dict[int, str]:
        """Return ``{id: name}`` for a model config (``{0: "LABEL_0"}`` for regression)."""
        if self.label_names is None:
            return {i: f"LABEL_{i}" for i in range(self.num_labels)}
        return dict(enumerate(self.label_names))

    def label2id(self) -> dict[str, int]:
        """Return ``{name: id}``, the inverse of :meth:`id2label`."""
        return {name: i for i, name in self.id2label().items()}


_TASKS: dict[str, TaskSpec] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower()


def register_task(
    spec: TaskSpec, aliases: tuple[str, ...] = (), overwrite: bool = False
) -> TaskSpec:
    """Add ``spec`` (and optional extra names for it) to the registry; return ``spec``.

    Raises DataError when the name or an alias is taken, unless ``overwrite`` is set.
    """
    if spec.source == "loader" and spec.loader is None:
        raise DataError(f"task {spec.name!r} has source 'loader' but no loader function")
    names = [_key(spec.name), *(_key(a) for a in aliases)]
    if not overwrite:
        for key in names:
            if key in _ALIASES:
                raise DataError(
                    f"a task named {key!r} already exists ({_ALIASES[key]}); "
                    "choose another name for your task"
                )
    _TASKS[_key(spec.name)] = spec
    for key in names:
        _ALIASES[key] = _key(spec.name)
    return spec


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Return the registered task for ``name`` (case-insensitive, aliases allowed).

    A TaskSpec passes through unchanged. Raises DataError listing the known tasks otherwise.
    """
    if isinstance(name, TaskSpec):
        return name
    spec = find_task(name)
    if spec is None:
        raise DataError(
            f"unknown task {name!r}; known tasks: {', '.join(list_tasks())} "
            "(or bring your own file with a custom task config)"
        )
    return spec


def find_task(name: str) -> TaskSpec | None:
    """Return the registered task for ``name`` (case-insensitive, aliases allowed), or None."""
    key = _ALIASES.get(_key(name))
    return _TASKS[key] if key is not None else None


def list_tasks() -> list[str]:
    """Return the canonical names of all registered tasks, in registration order."""
    return list(_TASKS)


def _glue(
    name: str,
    kind: TaskKind,
    label_names: tuple[str, ...] | None,
    metrics: tuple[str, ...],
    main: str,
    description: str,
    aliases: tuple[str, ...] = (),
) -> None:
    register_task(
        TaskSpec(name, kind, label_names, metrics, main, True, "glue", description), aliases
    )


# fmt: off
_ENTAIL = ("entailment", "not_entailment")
_NLI = ("contradiction", "entailment", "neutral")  # the classic MnliProcessor order
_glue("cola", "classification", ("unacceptable", "acceptable"), ("matthews", "accuracy"),
      main="matthews", description="CoLA: grammatical acceptability (GLUE)")
_glue("sst2", "classification", ("negative", "positive"), ("accuracy",),
      main="accuracy", description="SST-2: sentence sentiment (GLUE)", aliases=("sst-2",))
_glue("mrpc", "classification", ("not_equivalent", "equivalent"), ("f1", "accuracy"),
      main="f1", description="MRPC: paraphrase detection (GLUE)")
_glue("stsb", "regression", None, ("pearson", "spearman"),
      main="pearson", description="STS-B: sentence similarity 0-5 (GLUE)", aliases=("sts-b",))
_glue("qqp", "classification", ("not_duplicate", "duplicate"), ("f1", "accuracy"),
      main="f1", description="QQP: duplicate questions (GLUE)")
_glue("mnli", "classification", _NLI, ("accuracy",),
      main="accuracy", description="MNLI: natural language inference, dev = matched (GLUE)",
      aliases=("mnli-m", "mnli_m", "mnli-matched", "mnli_matched"))
_glue("mnli-mm", "classification", _NLI, ("accuracy",),
      main="accuracy", description="MNLI: natural language inference, dev = mismatched (GLUE)",
      aliases=("mnli_mm", "mnli-mismatched", "mnli_mismatched"))
_glue("qnli", "classification", _ENTAIL, ("accuracy",),
      main="accuracy", description="QNLI: question answering as inference (GLUE)")
_glue("rte", "classification", _ENTAIL, ("accuracy",),
      main="accuracy", description="RTE: textual entailment (GLUE)")
# fmt: on
register_task(
    TaskSpec(
        "conll2003",
        "token_classification",
        CONLL2003_LABELS,
        ("f1", "precision", "recall", "accuracy"),
        "f1",
        True,
        "conll2003",
        "CoNLL-2003: English named entities (PER, ORG, LOC, MISC), IOB2",
    ),
    ("ner", "conll", "conll-2003", "conll03"),
)
register_task(
    TaskSpec(
        "wikitext2",
        "text",
        None,
        (),
        "loss",
        False,
        "wikitext2",
        "WikiText-2: raw paragraphs (distillation corpus)",
    ),
    ("wikitext-2", "wikitext", "text"),
)


def normalize_split(split: str) -> str:
    """Return ``"train"``, ``"dev"`` or ``"test"`` for a split name (``validation`` = dev).

    Raises DataError for anything else.
    """
    key = _key(split)
    if key == "train":
        return "train"
    if key in ("dev", "validation", "valid", "val", "eval"):
        return "dev"
    if key == "test":
        return "test"
    raise DataError(f"unknown split {split!r}; use 'train' or 'dev' (also called 'validation')")
