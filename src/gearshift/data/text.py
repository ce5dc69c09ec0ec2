"""Raw text: WikiText-2 paragraphs, and plain sentences from any task's examples.

WikiText files (``<data root>/text/wikitext-2/{valid,test}.txt``) hold one paragraph per line,
blank lines, and headings such as `` = Title = `` or `` = = Section = = ``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from gearshift.data.example import Example
from gearshift.data.files import dataset_folders, find_file, open_text
from gearshift.data.tasks import TaskSpec
from gearshift.errors import DataError

SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train.txt", "wiki.train.tokens"),
    "dev": ("valid.txt", "wiki.valid.tokens"),
    "test": ("test.txt", "wiki.test.tokens"),
}

_HEADING = re.compile(r"^(=\s)+.*(\s=)+$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def is_heading(line: str) -> bool:
    """Return True for a WikiText heading line such as `` = Title = `` or ``= = Sub = =``."""
    stripped = line.strip()
    return stripped == "=" or bool(_HEADING.match(stripped))


def read_text_file(path: Path, limit: int | None = None) -> list[Example]:
    """Return one Example (``text_a`` only) per non-empty, non-heading line of ``path``.

    Lines are stripped of surrounding whitespace. Raises DataError for a file without text.
    """
    examples: list[Example] = []
    with open_text(path) as handle:
        for line in handle:
            text = line.strip()
            if text and not is_heading(text):
                examples.append(Example(text))
                if limit is not None and len(examples) >= limit:
                    break
    if not examples:
        raise DataError(f"{path} holds no text (only blank lines and headings)")
    return examples


def text_folders(data_dir: Path | None = None) -> list[Path]:
    """Return the folders searched for WikiText-2 files, in order.

    With ``data_dir``: ``data_dir``, ``data_dir/text/wikitext-2`` and ``data_dir/wikitext-2``.
    Without: ``<data root>/text/wikitext-2`` when a data root is found.
    """
    return dataset_folders(data_dir, "text", "wikitext-2")


def load_wikitext(
    task: TaskSpec, split: str, data_dir: Path | None = None, limit: int | None = None
) -> list[Example]:
    """Return the paragraphs of WikiText-2 ``split`` ("dev" = valid.txt, "test", "train").

    Raises DataError saying where the file was expected and to set GEARSHIFT_DATA.
    """
    names = SPLIT_FILES[split]
    folders = text_folders(data_dir)
    path = find_file(folders, names)
    if path is None:
        where = (
            f"{folders[0] / names[0]} does not exist"
            if folders
            else "GEARSHIFT_DATA is unset and no shared/data folder was found"
        )
        raise DataError(
            f"WikiText-2 {split} file not found: {where}; set GEARSHIFT_DATA to the folder "
            f"holding text/wikitext-2/{names[0]} (or pass the folder holding {names[0]})"
        )
    return read_text_file(path, limit)


def split_sentences(text: str) -> list[str]:
    """Return ``text`` cut after ``.``, ``!`` or ``?`` where the next word starts a sentence
    (a capital letter, digit, or opening quote/bracket); a rough splitter for corpora."""
    return [part.strip() for part in _SENTENCE_END.split(text) if part.strip()]


def iter_texts(examples: Iterable[Example], sentences: bool = False) -> Iterator[str]:
    """Yield the plain text fields of ``examples``: ``text_a``, then ``text_b`` when present.

    Token-classification examples yield their words joined by spaces. With ``sentences``,
    each field is further cut into sentences by :func:`split_sentences`. Empty fields are
    skipped. Useful for building distillation corpora from any task.
    """
    for example in examples:
        for text in (example.text_a, example.text_b):
            if not text or not text.strip():
                continue
            if sentences:
                yield from split_sentences(text)
            else:
                yield text.strip()
