"""Custom tasks: a user's own CSV, TSV or JSONL file, classification or regression.

A :class:`CustomTaskConfig` says which file(s) to read and which columns hold the text(s) and
the label; :func:`make_custom_task` turns it into a registered :class:`TaskSpec` that
:func:`gearshift.data.load_examples` can load like any built-in task.

The JSON config file (``CustomTaskConfig.from_json``) has these keys; only ``path``,
``text_column`` and ``label_column`` are required, relative paths are taken relative to the
config file's folder, and unknown keys are an error::

    {
      "name": "reviews",                 // task name, default "custom"
      "path": "reviews_train.csv",       // the train file, or the only file
      "dev_path": "reviews_dev.csv",     // optional; without it dev_fraction of path is dev
      "dev_fraction": 0.1,               // share of rows held out when dev_path is absent
      "seed": 0,                         // seed of that hold-out split
      "format": "csv",                   // csv | tsv | jsonl; default: from the extension
      "delimiter": ",",                  // default: "," for csv, "\\t" for tsv
      "quoting": true,                   // csv quoting; default on for csv, off for tsv
      "has_header": true,                // csv/tsv only; jsonl records are always keyed
      "text_column": "review",           // header name, key (jsonl) or 0-based index
      "text_pair_column": null,          // second text for sentence-pair tasks
      "label_column": "stars",
      "kind": "classification",          // or "regression"
      "label_names": null,               // default: sorted labels of the train file
      "main_metric": null                // default: accuracy / pearson
    }

A model fine-tuned on a custom task records this config in its gearshift.json with absolute
paths (``gearshift.data.recorded``), so evaluating it later needs no flags; ``recorded_in``
is then the model folder, named when the files have moved.
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from gearshift.data.example import Example
from gearshift.data.files import open_text
from gearshift.data.tasks import TaskSpec, find_task, register_task
from gearshift.errors import DataError

FORMATS = ("csv", "tsv", "jsonl")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

Column = str | int


@dataclass
class CustomTaskConfig:
    """Where a user's data set is and how to read it (see the module docstring for the JSON).

    Columns are header names (csv/tsv with ``has_header``), keys (jsonl) or 0-based indexes;
    a string of digits that is not a header name is taken as an index, so CLI flags can pass
    either. ``label_names`` fixes the classes and their ids; without it they are the sorted
    distinct labels of the train file (numerically sorted when all are integers).
    """

    path: Path
    text_column: Column
    label_column: Column
    text_pair_column: Column | None = None
    kind: str = "classification"
    name: str = "custom"
    dev_path: Path | None = None
    dev_fraction: float = 0.1
    seed: int = 0
    format: str | None = None
    delimiter: str | None = None
    quoting: bool | None = None
    has_header: bool = True
    label_names: list[str] | None = None
    main_metric: str | None = None
    recorded_in: str | None = None  # the model folder whose gearshift.json recorded this task

    def __post_init__(self) -> None:
        self.path = Path(self.path).expanduser()
        if self.dev_path is not None:
            self.dev_path = Path(self.dev_path).expanduser()
        if self.kind not in ("classification", "regression"):
            raise DataError(
                f"custom task {self.name!r}: kind must be 'classification' or 'regression', "
                f"got {self.kind!r}"
            )
        if self.format is not None and self.format not in FORMATS:
            raise DataError(
                f"custom task {self.name!r}: format must be one of {', '.join(FORMATS)}, "
                f"got {self.format!r}"
            )
        if not 0.0 < float(self.dev_fraction) < 1.0:
            raise DataError(
                f"custom task {self.name!r}: dev_fraction must be between 0 and 1, "
                f"got {self.dev_fraction!r}"
            )
        if self.label_names is not None:
            if self.kind == "regression":
                raise DataError(f"custom task {self.name!r}: a regression task has no label_names")
            self.label_names = [str(name) for name in self.label_names]
            if len(set(self.label_names)) != len(self.label_names) or len(self.label_names) < 2:
                raise DataError(
                    f"custom task {self.name!r}: label_names must be at least 2 distinct "
                    f"names, got {self.label_names}"
                )
        self.resolved_format(self.path)  # fail early on an unknown extension

    def resolved_format(self, path: Path | None = None) -> str:
        """Return the file format: ``format`` when set, else guessed from the extension."""
        if self.format is not None:
            return self.format
        path = path or self.path
        guessed = _EXTENSIONS.get(path.suffix.lower())
        if guessed is None:
            raise DataError(
                f"cannot tell the format of {path} from its extension; name it .csv, .tsv or "
                f".jsonl, or set format to one of {', '.join(FORMATS)}"
            )
        return guessed

    @classmethod
    def from_dict(cls, values: dict[str, Any], base_dir: Path | None = None) -> CustomTaskConfig:
        """Return a config from a dict such as a parsed JSON file.

        Relative paths are resolved against ``base_dir`` when given. Raises DataError for an
        unknown key or a missing required one.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DataError(
                f"unknown key(s) in custom task config: {', '.join(unknown)}; "
                f"allowed keys: {', '.join(sorted(known))}"
            )
        missing = [key for key in ("path", "text_column", "label_column") if key not in values]
        if missing:
            raise DataError(f"custom task config is missing {', '.join(missing)}")
        values = dict(values)
        for key in ("path", "dev_path"):
            if values.get(key) is not None:
                path = Path(values[key]).expanduser()
                if base_dir is not None and not path.is_absolute():
                    path = Path(base_dir) / path
                values[key] = path
        return cls(**values)

    @classmethod
    def from_json(cls, path: Path) -> CustomTaskConfig:
        """Return the config stored in the JSON file ``path`` (paths relative to its folder)."""
        path = Path(path).expanduser()
        with open_text(path) as handle:
            try:
                values = json.load(handle)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(values, dict):
            raise DataError(f"{path}: a custom task config must be a JSON object {{...}}")
        try:
            return cls.from_dict(values, base_dir=path.parent)
        except TypeError as exc:  # e.g. a list where a column was expected
            raise DataError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (paths as strings) that :meth:`from_dict` reads back."""
        values = asdict(self)
        values["path"] = str(self.path)
        values["dev_path"] = str(self.dev_path) if self.dev_path is not None else None
        return values


@dataclass
class _Row:
    line: int
    text_a: str
    text_b: str | None
    label: str | float


def make_custom_task(config: CustomTaskConfig, register: bool = True) -> TaskSpec:
    """Return a TaskSpec for ``config``, registered under ``config.name`` when ``register``.

    For classification without ``label_names`` the train file (all of it, when dev is split
    off the same file) is read once to collect the labels. Metrics: accuracy plus F1 of label
    id 1 (two classes) or macro F1 (more); regression: Pearson and Spearman. Raises DataError
    when the name belongs to a built-in task.
    """
    if config.kind == "regression":
        label_names = None
        metrics: tuple[str, ...] = ("pearson", "spearman")
    else:
        label_names = tuple(config.label_names or _infer_label_names(config))
        if len(label_names) < 2:
            raise DataError(
                f"{config.path} has only one distinct label ({label_names[0]!r}); a "
                "classification task needs at least two"
            )
        f1 = "f1" if len(label_names) == 2 else "macro_f1"
        metrics = ("accuracy", f1)
    main = config.main_metric or metrics[0]
    if main not in metrics:
        raise DataError(
            f"custom task {config.name!r}: main_metric {main!r} is not one of {', '.join(metrics)}"
        )
    spec = TaskSpec(
        name=config.name,
        kind=config.kind,  # type: ignore[arg-type]
        label_names=label_names,
        metrics=metrics,
        main_metric=main,
        source="custom",
        description=f"custom {config.kind} task from {config.path}",
        custom=config,
    )
    if register:
        existing = find_task(config.name)
        if existing is not None and existing.source != "custom":
            raise DataError(
                f"custom task name {config.name!r} is a built-in task; choose another name"
            )
        register_task(spec, overwrite=existing is not None)
    return spec


def load_custom(task: TaskSpec, split: str, limit: int | None = None) -> list[Example]:
    """Return the examples of a custom task's ``split`` ("train" or "dev").

    With ``dev_path`` each split is its own file; otherwise the rows of ``path`` are shuffled
    with ``seed`` and ``dev_fraction`` of them (at least one) form dev, the rest train, each
    kept in file order. Raises DataError for a bad file, row, column or label.
    """
    config = task.custom
    if config is None:
        raise DataError(f"task {task.name!r} is not a custom task")
    if split not in ("train", "dev"):
        raise DataError(f"custom task {task.name!r} has splits 'train' and 'dev', not {split!r}")
    if config.dev_path is not None:
        path = config.path if split == "train" else config.dev_path
        rows = _read_rows(path, config)
    else:
        path = config.path
        rows = _split_rows(_read_rows(path, config), config, split)
    if limit is not None:
        rows = rows[:limit]
    return [_to_example(row, task, path) for row in rows]


def _split_rows(rows: list[_Row], config: CustomTaskConfig, split: str) -> list[_Row]:
    """Return the rows of ``split`` from a single file split by ``dev_fraction`` and ``seed``."""
    n_dev = max(1, round(len(rows) * config.dev_fraction))
    if n_dev >= len(rows):
        raise DataError(
            f"{config.path} has {len(rows)} rows, too few to hold out a dev set; add rows or "
            "give a separate dev file (dev_path)"
        )
    order = list(range(len(rows)))
    random.Random(config.seed).shuffle(order)
    chosen = sorted(order[:n_dev] if split == "dev" else order[n_dev:])
    return [rows[i] for i in chosen]


def _infer_label_names(config: CustomTaskConfig) -> list[str]:
    """Return the sorted distinct labels of the train file (integers sorted as numbers)."""
    labels = {str(row.label) for row in _read_rows(config.path, config)}
    try:
        return sorted(labels, key=int)
    except ValueError:
        return sorted(labels)


def _to_example(row: _Row, task: TaskSpec, path: Path) -> Example:
    """Return ``row`` as an Example with its label converted; DataError on a bad label."""
    label: int | float
    if task.kind == "regression":
        label = _as_float(row.label, path, row.line)
    else:
        assert task.label_names is not None
        raw = str(row.label)
        if raw not in task.label_names:
            raise DataError(
                f"{path}, line {row.line}: unknown label {raw!r}; allowed labels: "
                f"{', '.join(task.label_names)} (set label_names in the task config to "
                "change them)"
            )
        label = task.label_names.index(raw)
    return Example(row.text_a, row.text_b, label)


def _as_float(raw: str | float, path: Path, line: int) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise DataError(
            f"{path}, line {line}: regression label {raw!r} is not a number; "
            "every label must be a number such as 3.25"
        )
    return value


def _read_rows(path: Path, config: CustomTaskConfig) -> list[_Row]:
    """Return the (line, texts, raw label) rows of one file; DataError when it has none."""
    if not Path(path).exists() and config.recorded_in is not None:
        from gearshift.data.recorded import data_hint

        raise DataError(
            f"data file not found: {path}. The model in {config.recorded_in} was fine-tuned on "
            f"the custom task {config.name!r}, read from that file; if the data moved, pass "
            f"it again: {data_hint(config.to_dict())} (or --task-config FILE)"
        )
    fmt = config.resolved_format(path)
    rows = _read_jsonl(path, config) if fmt == "jsonl" else _read_table(path, config, fmt)
    if not rows:
        raise DataError(f"{path} holds no examples (empty file, or a header only)")
    return rows


def _read_table(path: Path, config: CustomTaskConfig, fmt: str) -> list[_Row]:
    """Read a CSV/TSV file; return its rows. Checks column names and per-row column counts."""
    delimiter = config.delimiter or ("\t" if fmt == "tsv" else ",")
    quoting = config.quoting if config.quoting is not None else fmt == "csv"
    rows: list[_Row] = []
    with open_text(path, encoding="utf-8-sig") as handle:
        if quoting:
            reader = csv.reader(handle, delimiter=delimiter)
        else:
            reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE)
        header: list[str] | None = None
        width = 0
        columns: tuple[int, int | None, int] | None = None
        next_line = 1  # the line the next record starts on
        try:
            for record in reader:
                line, next_line = next_line, reader.line_num + 1
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue
                if columns is None:
                    width = len(record)
                    if config.has_header:
                        header = [name.strip() for name in record]
                    columns = (
                        _column_index(config.text_column, header, width, path),
                        None
                        if config.text_pair_column is None
                        else _column_index(config.text_pair_column, header, width, path),
                        _column_index(config.label_column, header, width, path),
                    )
                    if header is not None:
                        continue
                if len(record) != width and quoting and reader.line_num > line:
                    raise DataError(
                        f"{path}, line {line}: a quote opened on this line is not closed "
                        f"(the record runs on to line {reader.line_num}); close the quote, or "
                        "set quoting to false in the task config if quotes are part of the text"
                    )
                if len(record) != width:
                    raise DataError(
                        f"{path}, line {line}: expected {width} columns separated by "
                        f"{delimiter!r}, found {len(record)}; fix that line (or set "
                        "delimiter/quoting in the task config)"
                    )
                text, pair, label = columns
                rows.append(
                    _Row(
                        line,
                        record[text],
                        record[pair] if pair is not None else None,
                        record[label].strip(),
                    )
                )
        except csv.Error as exc:
            hint = (
                " (a quote opened there is never closed)"
                if "EOF" in str(exc) or "unexpected end" in str(exc)
                else ""
            )
            raise DataError(
                f"{path}, line {next_line}: cannot parse CSV ({exc}){hint}; fix that line, or "
                "set quoting to false in the task config if quotes are part of the text"
            ) from exc
    if header is not None and columns is not None:
        _check_header_is_not_data(path, config, header, columns[2], rows)
    return rows


def _check_header_is_not_data(
    path: Path, config: CustomTaskConfig, header: list[str], label: int, rows: list[_Row]
) -> None:
    """Raise DataError when the row read as a header looks like an example: every column was
    given by index (none by a header name) and its label cell is a number (regression) or
    one of the labels below it (classification). Reading it as a header would lose it."""
    given = [config.text_column, config.label_column, config.text_pair_column]
    by_name = [c for c in given if isinstance(c, str) and not c.strip().isdigit()]
    if any(c in header for c in by_name):
        return
    cell = header[label]
    if config.kind == "regression":
        try:
            looks_like_data = math.isfinite(float(cell))
        except ValueError:
            looks_like_data = False
    else:
        looks_like_data = cell in {str(r.label) for r in rows}
    if looks_like_data:
        raise DataError(
            f"{path}: the first line looks like an example (its label column holds {cell!r}, "
            "like the rows below it), but it would be read as a header and dropped. If the "
            "file has no header pass --no-header (has_header: false in a task config); if it "
            "has one, give the columns by their header names"
        )


def _column_index(column: Column, header: list[str] | None, width: int, path: Path) -> int:
    """Return the 0-based index of ``column`` (a header name or an index)."""
    if isinstance(column, str):
        if header is not None and column in header:
            return header.index(column)
        if column.strip().isdigit():
            column = int(column)
        elif header is not None:
            raise DataError(
                f"{path}: column {column!r} not found; the header has columns: "
                f"{', '.join(repr(name) for name in header)}"
            )
        else:
            raise DataError(
                f"{path}: column {column!r} is a name but the file has no header "
                "(has_header is false); give 0-based column indexes instead"
            )
    if isinstance(column, bool) or not isinstance(column, int):
        raise DataError(f"{path}: a column must be a name or a 0-based index, got {column!r}")
    if not 0 <= column < width:
        raise DataError(
            f"{path}: column index {column} is out of range; rows have {width} columns "
            f"(indexes 0 to {width - 1})"
        )
    return column


def _read_jsonl(path: Path, config: CustomTaskConfig) -> list[_Row]:
    """Read a JSON-lines file (one object per line); return its rows."""
    keys = [config.text_column, config.label_column]
    if config.text_pair_column is not None:
        keys.append(config.text_pair_column)
    for key in keys:
        if not isinstance(key, str):
            raise DataError(f"{path}: JSONL columns are keys of each record, got the index {key!r}")
    rows: list[_Row] = []
    with open_text(path, encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {line}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DataError(f"{path}, line {line}: each line must be a JSON object {{...}}")
            for key in keys:
                if key not in record:
                    raise DataError(
                        f"{path}, line {line}: no key {key!r}; this record has keys: "
                        f"{', '.join(repr(k) for k in record)}"
                    )
            label = record[config.label_column]
            if config.kind == "regression" and isinstance(label, int | float):
                raw: str | float = float(label)
            else:
                raw = str(label).strip()
            pair = record[config.text_pair_column] if config.text_pair_column else None
            rows.append(
                _Row(
                    line,
                    str(record[config.text_column]),
                    None if pair is None else str(pair),
                    raw,
                )
            )
    return rows
