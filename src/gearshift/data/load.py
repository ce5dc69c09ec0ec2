"""One entry point that loads any task's split with the right reader."""

from __future__ import annotations

from pathlib import Path

from gearshift.data.conll import load_conll
from gearshift.data.custom import load_custom
from gearshift.data.example import Example
from gearshift.data.glue import load_glue
from gearshift.data.tasks import TaskSpec, get_task, normalize_split
from gearshift.data.text import load_wikitext
from gearshift.errors import DataError


def load_examples(
    task: str | TaskSpec,
    split: str,
    data_dir: str | Path | None = None,
    limit: int | None = None,
) -> list[Example]:
    """Return the examples of ``split`` ("train", "dev"/"validation", or "test" where the
    task has labelled test data) of ``task`` (a name, alias or TaskSpec).

    ``data_dir`` overrides where files are looked for: either the task's own folder (e.g. the
    GLUE folder holding ``RTE/``) or the data root holding ``glue/``, ``ner/`` and ``text/``.
    Without it, GLUE_DIR / GEARSHIFT_DATA / ``../shared/data`` are used (:mod:`gearshift.paths`).
    Custom tasks read the paths in their config. ``limit`` keeps the first ``limit`` examples.
    Every data problem raises DataError.
    """
    spec = get_task(task)
    split = normalize_split(split)
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a positive number of examples, got {limit}")
    folder = Path(data_dir).expanduser() if data_dir is not None else None
    if spec.source == "glue":
        return load_glue(spec, split, folder, limit)
    if spec.source == "conll2003":
        return load_conll(spec, split, folder, limit)
    if spec.source == "wikitext2":
        return load_wikitext(spec, split, folder, limit)
    if spec.source == "custom":
        return load_custom(spec, split, limit)
    if spec.loader is not None:
        examples = spec.loader(spec, split, folder)
        if not examples:
            raise DataError(f"task {spec.name!r} has no examples in split {split!r}")
        return examples[:limit] if limit is not None else examples
    raise DataError(f"task {spec.name!r} has no reader (source {spec.source!r})")
