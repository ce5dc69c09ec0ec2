"""CoNLL-2003 NER reader: one ``word POS chunk NER`` line per token, blank lines between
sentences, ``-DOCSTART-`` lines between documents.

Files live at ``<data root>/ner/conll2003/{train,dev}.txt``; tags are the 9 IOB2 tags of
:data:`gearshift.data.tasks.CONLL2003_LABELS`.
"""

from __future__ import annotations

from pathlib import Path

from gearshift.data.example import Example
from gearshift.data.files import dataset_folders, find_file, open_text
from gearshift.data.tasks import TaskSpec
from gearshift.errors import DataError

SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("train.txt",),
    "dev": ("dev.txt", "valid.txt"),
    "test": ("test.txt",),
}


def read_conll(path: Path, label_names: tuple[str, ...], limit: int | None = None) -> list[Example]:
    """Read a CoNLL-format file; return one Example per sentence.

    Each Example has ``words``, ``label`` (one tag id per word, ids into ``label_names``) and
    ``text_a`` (the words joined by spaces). The word is a line's first field and the tag its
    last, so both the 4-column CoNLL-2003 layout and 2-column ``word TAG`` files work.
    Raises DataError naming the file and line for a line with one field or an unknown tag,
    and for a file without sentences.
    """
    tag_ids = {tag: i for i, tag in enumerate(label_names)}
    examples: list[Example] = []
    words: list[str] = []
    tags: list[int] = []

    def close_sentence() -> None:
        if words:
            examples.append(Example(" ".join(words), None, list(tags), list(words)))
            words.clear()
            tags.clear()

    with open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                close_sentence()
                if limit is not None and len(examples) >= limit:
                    break
                continue
            if len(fields) < 2:
                raise DataError(
                    f"{path}, line {line_no}: expected 'word POS chunk TAG' (or 'word TAG'), "
                    f"found {len(fields)} field; separate sentences with blank lines only"
                )
            tag = fields[-1]
            if tag not in tag_ids:
                raise DataError(
                    f"{path}, line {line_no}: unknown label {tag!r}; allowed labels: "
                    f"{', '.join(label_names)}"
                )
            words.append(fields[0])
            tags.append(tag_ids[tag])
        else:
            close_sentence()
    if not examples:
        raise DataError(f"{path} holds no sentences; use a CoNLL file with one token per line")
    return examples[:limit] if limit is not None else examples


def conll_folders(data_dir: Path | None = None) -> list[Path]:
    """Return the folders searched for the CoNLL-2003 files, in order.

    With ``data_dir``: ``data_dir`` itself, ``data_dir/ner/conll2003`` and
    ``data_dir/conll2003``. Without: ``<data root>/ner/conll2003`` when a data root is found.
    """
    return dataset_folders(data_dir, "ner", "conll2003")


def load_conll(
    task: TaskSpec, split: str, data_dir: Path | None = None, limit: int | None = None
) -> list[Example]:
    """Return the sentences of CoNLL-2003 ``split`` ("train", "dev" or "test").

    Raises DataError saying where the file was expected and to set GEARSHIFT_DATA.
    """
    assert task.label_names is not None
    names = SPLIT_FILES[split]
    folders = conll_folders(data_dir)
    path = find_file(folders, names)
    if path is None:
        where = (
            f"{folders[0] / names[0]} does not exist"
            if folders
            else "GEARSHIFT_DATA is unset and no shared/data folder was found"
        )
        raise DataError(
            f"CoNLL-2003 {split} file not found: {where}; set GEARSHIFT_DATA to the folder "
            f"holding ner/conll2003/{names[0]} (or pass the folder holding {names[0]})"
        )
    return read_conll(path, task.label_names, limit)
