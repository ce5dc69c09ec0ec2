"""GLUE readers: the classic ``GLUE_DIR`` TSV files, or the ``datasets`` hub copy as a fallback.

Local files follow the layout of the original ``download_glue_data.py``:
``<glue_dir>/<FOLDER>/{train,dev}.tsv`` with folders CoLA, SST-2, MRPC, STS-B, QQP, MNLI
(``dev_matched.tsv`` / ``dev_mismatched.tsv``), QNLI and RTE. They are read as the classic BERT
and ``run_glue`` processors read them: ``csv.reader(delimiter="\\t", quotechar=None)`` on
``utf-8-sig`` text (quoting off: the files contain unbalanced ``"``), the same text and label
columns, a header row everywhere except CoLA.

When no local file exists, :func:`load_glue` falls back to
``datasets.load_dataset("nyu-mll/glue", <config>)``. If the hub cannot be reached it fails at
once with a DataError that says where the local copy was expected and which variable to set.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from gearshift import paths
from gearshift.data.example import Example
from gearshift.data.files import find_file, open_text
from gearshift.data.tasks import TaskSpec
from gearshift.errors import DataError

logger = logging.getLogger("gearshift.data")

HUB_DATASET = "nyu-mll/glue"
HUB_CONNECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class GlueLayout:
    """Where a GLUE task's files are and which columns hold what (classic processor layout).

    ``label_column`` may be negative (counted from the end, as the processors' ``line[-1]``).
    ``label_values`` are the raw strings in the file, in label-id order; None for regression.
    ``num_columns`` is the fixed column count of header-less files (CoLA).
    """

    folder: str
    text_columns: tuple[int, ...]
    label_column: int
    label_values: tuple[str, ...] | None
    has_header: bool = True
    num_columns: int | None = None
    dev_file: str = "dev.tsv"
    hub_config: str = ""
    hub_split_dev: str = "validation"
    hub_text_fields: tuple[str, ...] = ()


_BINARY = ("0", "1")
_ENTAIL = ("entailment", "not_entailment")
_NLI = ("contradiction", "entailment", "neutral")

# fmt: off
GLUE_LAYOUTS: dict[str, GlueLayout] = {
    "cola": GlueLayout("CoLA", (3,), 1, _BINARY, has_header=False, num_columns=4,
                       hub_config="cola", hub_text_fields=("sentence",)),
    "sst2": GlueLayout("SST-2", (0,), 1, _BINARY,
                       hub_config="sst2", hub_text_fields=("sentence",)),
    "mrpc": GlueLayout("MRPC", (3, 4), 0, _BINARY,
                       hub_config="mrpc", hub_text_fields=("sentence1", "sentence2")),
    "stsb": GlueLayout("STS-B", (7, 8), -1, None,
                       hub_config="stsb", hub_text_fields=("sentence1", "sentence2")),
    "qqp": GlueLayout("QQP", (3, 4), 5, _BINARY,
                      hub_config="qqp", hub_text_fields=("question1", "question2")),
    "mnli": GlueLayout("MNLI", (8, 9), -1, _NLI, dev_file="dev_matched.tsv",
                       hub_config="mnli", hub_split_dev="validation_matched",
                       hub_text_fields=("premise", "hypothesis")),
    "mnli-mm": GlueLayout("MNLI", (8, 9), -1, _NLI, dev_file="dev_mismatched.tsv",
                          hub_config="mnli", hub_split_dev="validation_mismatched",
                          hub_text_fields=("premise", "hypothesis")),
    "qnli": GlueLayout("QNLI", (1, 2), -1, _ENTAIL,
                       hub_config="qnli", hub_text_fields=("question", "sentence")),
    "rte": GlueLayout("RTE", (1, 2), -1, _ENTAIL,
                      hub_config="rte", hub_text_fields=("sentence1", "sentence2")),
}
# fmt: on

_HOW_TO_POINT = (
    "set GLUE_DIR to the folder holding {folder}/{file} "
    "(or GEARSHIFT_DATA to the folder holding glue/{folder}/{file})"
)


def glue_layout(task: TaskSpec) -> GlueLayout:
    """Return the file layout of a GLUE task; DataError when ``task`` is not a GLUE task."""
    layout = GLUE_LAYOUTS.get(task.name)
    if layout is None:
        raise DataError(f"task {task.name!r} is not a GLUE task")
    return layout


def glue_file_name(task: TaskSpec, split: str) -> str:
    """Return the TSV file name of ``split`` (``"train"`` or ``"dev"``) for a GLUE task."""
    if split == "train":
        return "train.tsv"
    if split == "dev":
        return glue_layout(task).dev_file
    raise DataError(
        f"GLUE split {split!r} is not supported for {task.name}: GLUE test files carry no "
        "labels; use 'train' or 'dev'"
    )


def glue_folders(data_dir: Path | None = None) -> list[Path]:
    """Return the folders that may hold the GLUE task folders, in the order they are tried.

    With ``data_dir``: ``data_dir`` itself and ``data_dir/glue`` (so either the GLUE folder or
    the data root may be given). Without: ``paths.glue_dir()`` (GLUE_DIR, else
    ``<data root>/glue``), or nothing when neither is set or found.
    """
    if data_dir is not None:
        data_dir = Path(data_dir).expanduser()
        return [data_dir, data_dir / "glue"]
    found = paths.glue_dir()
    return [found] if found is not None else []


def read_glue_tsv(path: Path, task: TaskSpec, limit: int | None = None) -> list[Example]:
    """Read one GLUE TSV file the way the classic processors do; return its examples.

    Classification labels become ids into ``task.label_names``; STS-B scores become floats.
    Raises DataError naming the file and 1-based line for a wrong column count, an unknown
    label or a non-numeric score, and for a file without examples.
    """
    layout = glue_layout(task)
    examples: list[Example] = []
    label_ids = (
        {value: i for i, value in enumerate(layout.label_values)} if layout.label_values else None
    )
    with open_text(path, encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter="\t", quotechar=None)
        width = layout.num_columns
        needed = max(*layout.text_columns, layout.label_column) + 1
        for row in reader:
            line = reader.line_num
            if not row:
                continue  # blank line
            if width is None:  # first row of a file with a header
                width = len(row)
                if width < needed:
                    raise DataError(
                        f"{path}, line {line}: the header has {width} columns but "
                        f"{layout.folder} needs at least {needed}; is this the GLUE "
                        f"{layout.folder} file?"
                    )
                continue
            if len(row) != width:
                raise DataError(
                    f"{path}, line {line}: expected {width} tab-separated columns, found "
                    f"{len(row)}; fix or remove that line (GLUE TSVs are read with quoting "
                    "off, one example per line)"
                )
            raw = row[layout.label_column].strip()
            label: int | float
            if label_ids is not None:
                if raw not in label_ids:
                    raise DataError(
                        f"{path}, line {line}: unknown label {raw!r}; allowed labels for "
                        f"{task.name}: {', '.join(label_ids)}"
                    )
                label = label_ids[raw]
            else:
                label = _parse_score(raw, path, line)
            texts = [row[c] for c in layout.text_columns]
            examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise DataError(
            f"{path} holds no examples (empty file, or a header only); "
            f"use the complete GLUE {layout.folder} file"
        )
    return examples


def _parse_score(raw: str, path: Path, line: int) -> float:
    """Return ``raw`` as a finite float; DataError naming file and line otherwise."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(
            f"{path}, line {line}: regression label {raw!r} is not a number; "
            "every label must be a number such as 3.25"
        )
    return value


def load_glue(
    task: TaskSpec,
    split: str,
    data_dir: Path | None = None,
    limit: int | None = None,
    allow_hub: bool = True,
) -> list[Example]:
    """Return the examples of a GLUE task's ``split`` ("train" or "dev").

    Reads the local TSV (see :func:`glue_folders` for where it is looked for); without one,
    loads the ``datasets`` hub copy when ``allow_hub`` is set. Raises DataError naming the
    expected path and the variables to set when neither works.
    """
    layout = glue_layout(task)
    file_name = glue_file_name(task, split)
    folders = [folder / layout.folder for folder in glue_folders(data_dir)]
    path = find_file(folders, [file_name])
    if path is not None:
        return read_glue_tsv(path, task, limit)

    how = _HOW_TO_POINT.format(folder=layout.folder, file=file_name)
    if folders:
        where = f"no local copy at {folders[0] / file_name}"
    else:
        where = (
            "no local copy (GLUE_DIR and GEARSHIFT_DATA are unset and no shared/data folder "
            "was found beside the current folder)"
        )
    if not allow_hub:
        raise DataError(f"{task.name} {split}: {where}; {how}")
    return _load_from_hub(task, split, limit, where, how)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_unreachable_reason() -> str | None:
    """Return why the Hugging Face hub cannot be used right now, or None when it answers.

    Offline mode (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``) is not reported here: the
    ``datasets`` cache may still serve the data. Otherwise one TCP connection to the hub
    endpoint (``HF_ENDPOINT``) is tried with a short timeout, so a machine without network
    fails in seconds instead of after the library's retries.
    """
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc}"


def _load_from_hub(
    task: TaskSpec, split: str, limit: int | None, where: str, how: str
) -> list[Example]:
    """Return the examples of ``split`` from the hub's GLUE copy; DataError when unreachable."""
    layout = glue_layout(task)
    offline = [var for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if _env_flag(var)]
    if not offline:
        reason = hub_unreachable_reason()
        if reason is not None:
            raise DataError(
                f"{task.name} {split}: {where}, and the Hugging Face hub is unreachable "
                f"({reason}); {how}"
            )
    hub_split = "train" if split == "train" else layout.hub_split_dev
    logger.info(
        "%s: %s; loading %s/%s from the hub", task.name, where, HUB_DATASET, layout.hub_config
    )
    try:
        import datasets

        dataset = datasets.load_dataset(HUB_DATASET, layout.hub_config, split=hub_split)
    except Exception as exc:  # the library raises many types (ConnectionError, OSError, ...)
        state = f"offline mode is on ({', '.join(offline)}) and " if offline else ""
        raise DataError(
            f"{task.name} {split}: {where}, and the Hugging Face hub is unreachable "
            f"({state}loading {HUB_DATASET}/{layout.hub_config} failed: {exc}); {how}"
        ) from exc
    return _examples_from_hub(task, dataset, limit)


def _examples_from_hub(task: TaskSpec, dataset, limit: int | None) -> list[Example]:
    """Return Examples from a hub GLUE split, mapping its label names onto the task's ids."""
    layout = glue_layout(task)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    hub_names = getattr(dataset.features["label"], "names", None)
    to_id: dict[int, int] | None = None
    if task.label_names is not None:
        if hub_names is None:
            raise DataError(f"the hub copy of {task.name} has no label names")
        ours = {name: i for i, name in enumerate(task.label_names)}
        to_id = {i: ours[name] for i, name in enumerate(hub_names) if name in ours}
    examples: list[Example] = []
    for row in dataset:
        texts = [row[field] for field in layout.hub_text_fields]
        raw = row["label"]
        if to_id is None:
            label: int | float = float(raw)
        elif raw in to_id:
            label = to_id[raw]
        else:
            raise DataError(
                f"the hub copy of {task.name} has label {raw!r}, which is not one of "
                f"{', '.join(task.label_names or ())} (test splits carry no labels)"
            )
        examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
    if not examples:
        raise DataError(f"the hub copy of {task.name} holds no examples")
    return examples
