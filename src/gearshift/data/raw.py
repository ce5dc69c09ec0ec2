"""Raw text for training without labels, tokenized into features the Trainer can batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gearshift.data.example import Example
from gearshift.data.load import load_examples
from gearshift.data.text import iter_texts
from gearshift.errors import DataError


def raw_texts(
    text: str | None = "wikitext2",
    task: str | None = None,
    limit: int | None = None,
    data_dir: str | None = None,
) -> list[str]:
    """Raw text for label-free training (plugin pre-training, distillation into shared
    models): WikiText-2 paragraphs ("wikitext2", its validation split: the data folder has
    no train split), or the lines of a text file, plus the training sentences of ``task``
    (its labels are not used). ``limit`` caps each source."""
    texts: list[str] = []
    if text == "wikitext2":
        texts += list(iter_texts(load_examples("wikitext2", "dev", data_dir=data_dir, limit=limit)))
    elif text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise DataError(
                f"text file {path} does not exist; pass 'wikitext2' or a .txt file with one passage per line"
            )
        lines = [
            line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
        texts += lines[:limit] if limit else lines
    if task:
        texts += list(iter_texts(load_examples(task, "train", data_dir=data_dir, limit=limit)))
    if not texts:
        raise DataError("no text to train on: give --text wikitext2 (or a file) and/or --task")
    return texts


def pack_sentences(texts: Sequence[str], max_words: int = 80) -> list[str]:
    """Cut each text into sentences and pack consecutive ones into passages of at most
    ``max_words`` words (a longer sentence stays whole), so long paragraphs are used in full
    instead of being truncated at the model's length."""
    from gearshift.data.text import split_sentences

    if max_words < 1:
        raise DataError(f"max_words={max_words} must be >= 1")
    out: list[str] = []
    for text in texts:
        current: list[str] = []
        words = 0
        for sentence in split_sentences(text):
            n = len(sentence.split())
            if current and words + n > max_words:
                out.append(" ".join(current))
                current, words = [], 0
            current.append(sentence)
            words += n
        if current:
            out.append(" ".join(current))
    return out


def text_features(
    tokenizer: Any, texts: Sequence[str], max_length: int = 128
) -> tuple[list[dict], Callable]:
    """Tokenize raw ``texts`` (truncated to ``max_length``); returns (features, collator)."""
    from gearshift.data.encode import encode_examples, make_collator

    features = encode_examples(
        [Example(t) for t in texts], tokenizer, "wikitext2", max_length=max_length
    )
    return features, make_collator(tokenizer, "wikitext2")
