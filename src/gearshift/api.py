"""The top-level API: ``gearshift.load(path)`` and ``gearshift.predict(model, texts)``.

    import gearshift

    model = gearshift.load("runs/demo/teacher/best")   # any model folder, checkpoint or alias
    gearshift.predict(model, ["a gorgeous film", "a waste of time"])
    # [{"label": "positive", "probabilities": {"negative": 0.03, "positive": 0.97}}, ...]

``gearshift predict --model M --input FILE`` is the same function on a file
(:func:`read_inputs` reads it).
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gearshift.errors import ConfigError, DataError

logger = logging.getLogger("gearshift")

# Folder kinds gearshift.load dispatches on (gearshift.json's "kind"), each to the
# "module:function" that loads such a folder, imported on first use. A kind listed here is
# tried first; every other kind goes through runtime.load_model, which knows plain models
# and the kinds packages declare (runtime.io.folder_kinds: the "gearshift.folder_kinds"
# entry points). ADD NEW KINDS HERE (one line each) when they need more than load_model:
# the function takes the folder and returns a module whose forward(input_ids,
# attention_mask=None, token_type_ids=None) returns an output with .logits, and which has
# .config (the base ModelConfig).
LOADERS: dict[str, str] = {
    # a base model with its plan providers (gearshift.compose); listed here too so that a
    # checkout whose entry points are not installed yet still loads stacks
    "stack": "gearshift.compose.io:load_stack",
}


def load(path: str | Any, **kwargs: Any) -> Any:
    """Return the model in ``path`` in eval mode, whatever wrote it, with ``.tokenizer``
    (its tokenizer) and ``.folder`` (``path``) set.

    ``path``: a gearshift folder (a plain model, a method's folder such as a factorized or
    multi-exit model, a stack), a Hugging Face checkpoint folder or hub name, or a built-in
    alias such as ``"minilm-l6"``. ``kwargs`` go to the kind's loader. Raises ArtifactError
    naming the folder's kind when it cannot be loaded as a model (e.g. a plugin folder,
    which needs its base model).
    """
    from gearshift.data.recorded import check_model_exists
    from gearshift.errors import ArtifactError
    from gearshift.paths import resolve_model_name
    from gearshift.runtime import load_pretrained, load_tokenizer
    from gearshift.runtime.io import NOT_A_MODEL, folder_kind, load_model

    name = str(path)
    check_model_exists(name)
    folder = Path(resolve_model_name(name)).expanduser()
    kind = folder_kind(folder) if folder.is_dir() else None
    if folder.is_dir() and kind is None and (folder / "gearshift.json").is_file():
        from gearshift.runtime.io import read_meta

        read_meta(folder)  # a damaged gearshift.json: raises the error that names the fix
    if kind is None:  # a Hugging Face checkpoint, a hub name or an alias
        model = load_pretrained(name, **kwargs)
    elif kind in LOADERS:
        module, _, func = LOADERS[kind].partition(":")
        try:
            loader = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError) as exc:
            raise ArtifactError(
                f"{folder} is a {kind!r} folder, and this gearshift cannot load that kind "
                f"({LOADERS[kind]} is missing: {exc}); upgrade gearshift"
            ) from exc
        model = loader(folder, **kwargs)
    elif kind in NOT_A_MODEL:
        raise ArtifactError(f"{folder} is a {kind!r} folder, not a model: {NOT_A_MODEL[kind]}")
    else:  # a plain model, or a kind the runtime knows (runtime.io.folder_kinds)
        model = load_model(folder)
    model.tokenizer = None
    # the folder's own tokenizer, else that of the checkpoint the model was built from
    source = getattr(getattr(model, "config", None), "source", None)
    for candidate in dict.fromkeys(c for c in (name, source) if c):
        try:
            model.tokenizer = load_tokenizer(candidate)
            break
        except ArtifactError:
            continue
    model.folder = name
    return model.eval()


def _softmax(row: Sequence[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def predict(
    model: Any,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None = None,
    *,
    tokenizer: Any = None,
    batch_size: int = 32,
    max_length: int = 128,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Return one dict per text: ``{"label": name, "probabilities": {name: p, ...}}`` for a
    classification head, ``{"score": x}`` for a regression head.

    ``model``: what :func:`load` returns (or any gearshift model; pass ``tokenizer`` when it
    has no ``.tokenizer``). ``text_pairs``: the second text of each pair for sentence-pair
    tasks (as many as ``texts``). Texts are batched ``batch_size`` at a time, truncated to
    ``max_length`` tokens; ``progress`` shows a tqdm bar. Raises ConfigError for a model
    without a sequence head, DataError for mismatched inputs.
    """
    import torch
    from tqdm.auto import tqdm

    texts = [str(t) for t in texts]
    if text_pairs is not None:
        text_pairs = [str(t) for t in text_pairs]
        if len(text_pairs) != len(texts):
            raise DataError(
                f"predict got {len(texts)} texts but {len(text_pairs)} text pairs; give one "
                "pair per text"
            )
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError(
            "predict needs the model's tokenizer: load the model with gearshift.load(folder), "
            "or pass tokenizer="
        )
    head = model.config.head
    if head.kind not in ("classification", "regression"):
        what = "no task head" if head.kind is None else f"a {head.kind} head"
        raise ConfigError(
            f"predict gives labels or scores of a sequence head, and this model has {what}; "
            "fine-tune it on a classification or regression task first (gearshift finetune)"
        )
    if getattr(model, "head_is_fresh", False):
        logger.warning("the model's head holds fresh random weights: its predictions are chance")
    names = list(head.label_names or [f"LABEL_{i}" for i in range(head.num_labels)])
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    out: list[dict[str, Any]] = []
    with (
        torch.inference_mode(),
        tqdm(total=len(texts), desc="predict", unit="text", disable=not progress) as bar,
    ):
        for start in range(0, len(texts), batch_size):
            firsts = texts[start : start + batch_size]
            seconds = text_pairs[start : start + batch_size] if text_pairs is not None else None
            enc = tokenizer(
                firsts,
                seconds,
                truncation=True,
                max_length=max_length,
                padding="longest",
                return_tensors="pt",
            )
            inputs = {
                k: v.to(device)
                for k, v in enc.items()
                if k in ("input_ids", "attention_mask", "token_type_ids")
            }
            logits = model(**inputs).logits.float().cpu()
            for row in logits.tolist():
                if head.kind == "regression":
                    out.append({"score": row[0] if isinstance(row, list) else row})
                else:
                    probs = _softmax(row)
                    best = max(range(len(probs)), key=probs.__getitem__)
                    out.append({"label": names[best], "probabilities": dict(zip(names, probs))})
            bar.update(len(firsts))
    return out


# ---------------------------------------------------------------------- reading input files
_TEXT_NAMES = ("text", "sentence", "sentence1", "review", "question", "content")


def _fmt(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".csv",):
        return "csv"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    return "txt"


def _column(column: str | None, header: list[str] | None, width: int, path: Path, what: str):
    if column is None:
        return None
    if header is not None and column in header:
        return header.index(column)
    if column.strip().isdigit() and int(column) < width:
        return int(column)
    listing = (
        f"the header has columns {', '.join(repr(h) for h in header)}"
        if header is not None
        else f"rows have {width} columns (indexes 0 to {width - 1}; the file has no header)"
    )
    raise DataError(f"{path}: {what} {column!r} not found; {listing}")


def read_inputs(
    path: str | Path,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    has_header: bool = True,
) -> tuple[list[str], list[str] | None, list[int]]:
    """Return (texts, text pairs or None, line numbers) read from ``path``.

    ``.txt`` (or any other extension): one text per non-empty line. ``.csv``/``.tsv``: the
    column ``text_column`` (a header name or 0-based index; default: a column named text,
    sentence, ... or the only column); ``has_header=False`` for a file without a header row.
    ``.jsonl``: the key ``text_column`` (default "text") of each object. Raises DataError
    naming the file, the line and the fix.
    """
    from gearshift.data.files import open_text

    path = Path(path).expanduser()
    fmt = _fmt(path)
    texts: list[str] = []
    pairs: list[str] | None = [] if text_pair_column is not None else None
    lines: list[int] = []
    with open_text(path, encoding="utf-8-sig") as handle:
        if fmt == "txt":
            if text_column is not None or text_pair_column is not None:
                raise DataError(
                    f"{path} is read as plain text (one text per line), which has no columns; "
                    "name the file .csv, .tsv or .jsonl to pick columns"
                )
            for n, line in enumerate(handle, start=1):
                if line.strip():
                    texts.append(line.rstrip("\r\n"))
                    lines.append(n)
        elif fmt == "jsonl":
            key = text_column or "text"
            for n, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}, line {n}: not valid JSON ({exc.msg})") from exc
                if not isinstance(record, dict):
                    raise DataError(f"{path}, line {n}: each line must be a JSON object {{...}}")
                for k in (key, text_pair_column):
                    if k is not None and k not in record:
                        raise DataError(
                            f"{path}, line {n}: no key {k!r} (keys: "
                            f"{', '.join(map(repr, record))}); pass --text-column KEY"
                        )
                texts.append(str(record[key]))
                if pairs is not None:
                    pairs.append(str(record[text_pair_column]))
                lines.append(n)
        else:
            reader = csv.reader(handle, delimiter="," if fmt == "csv" else "\t")
            header: list[str] | None = None
            cols: tuple[int, int | None] | None = None
            next_line = 1
            try:
                for record in reader:
                    n, next_line = next_line, reader.line_num + 1
                    if not record or (len(record) == 1 and not record[0].strip()):
                        continue
                    if cols is None:
                        if has_header:
                            header = [h.strip() for h in record]
                        width = len(record)
                        if text_column is None:
                            found = [h for h in _TEXT_NAMES if header and h in header]
                            if found:
                                text_column = found[0]
                            elif width == 1:
                                text_column = "0"
                            else:
                                raise DataError(
                                    f"{path}: which column holds the text? Pass --text-column "
                                    "(a header name or 0-based index); "
                                    + (
                                        f"the header has {', '.join(map(repr, header))}"
                                        if header
                                        else f"rows have {width} columns"
                                    )
                                )
                        cols = (
                            _column(text_column, header, width, path, "text column"),
                            _column(text_pair_column, header, width, path, "text pair column"),
                        )
                        if header is not None:
                            if not (
                                text_column in header
                                or (text_pair_column is not None and text_pair_column in header)
                            ):
                                raise DataError(
                                    f"{path}: the columns are given by index, so the first line "
                                    f"({record[cols[0]]!r}) would be dropped as a header; "
                                    "pass --no-header if it is a text, or give the columns by "
                                    "their header names"
                                )
                            continue
                    if len(record) <= max(c for c in cols if c is not None):
                        raise DataError(
                            f"{path}, line {n}: {len(record)} columns, too few for the text "
                            "column; fix that line"
                        )
                    texts.append(record[cols[0]])
                    if pairs is not None and cols[1] is not None:
                        pairs.append(record[cols[1]])
                    lines.append(n)
            except csv.Error as exc:
                raise DataError(f"{path}, line {next_line}: cannot parse ({exc})") from exc
    if not texts:
        raise DataError(f"{path} holds no texts (empty file, or a header only)")
    return texts, pairs, lines


def write_predictions(
    path: str | Path,
    rows: list[dict[str, Any]],
    texts: list[str],
    pairs: list[str] | None,
    lines: list[int],
) -> Path:
    """Write ``rows`` (from :func:`predict`) with their inputs to ``path`` atomically: JSON
    lines for ``.jsonl``, a table for ``.csv``/``.tsv``; returns the path."""
    import io

    from gearshift.atomic import write_text_atomic

    path = Path(path)
    records = []
    for row, text, n, i in zip(rows, texts, lines, range(len(rows))):
        rec: dict[str, Any] = {"line": n, "text": text}
        if pairs is not None:
            rec["text_pair"] = pairs[i]
        rec.update(row)
        records.append(rec)
    fmt = _fmt(path)
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    elif fmt in ("csv", "tsv"):
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
        names = list(records[0].get("probabilities", {})) if records else []
        head = ["line", "text"] + (["text_pair"] if pairs is not None else [])
        head += ["label"] + [f"p_{n}" for n in names] if names else ["score"]
        writer.writerow(head)
        for r in records:
            cells = [r["line"], r["text"]] + ([r["text_pair"]] if pairs is not None else [])
            if names:
                cells += [r["label"]] + [f"{r['probabilities'][n]:.6f}" for n in names]
            else:
                cells += [f"{r['score']:.6f}"]
            writer.writerow(cells)
        text = buf.getvalue()
    else:
        raise ConfigError(f"--output {path}: name it .jsonl or .csv (or .tsv)")
    return write_text_atomic(path, text)
