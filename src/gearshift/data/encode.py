"""Turning examples into model inputs: tokenization, label alignment, collators, loaders.

:func:`encode_examples` tokenizes without padding; padding happens per batch in the collator
from :func:`make_collator` (dynamic by default, or to a fixed length for measurements).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import (
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
)

from gearshift.data.example import Example
from gearshift.data.tasks import IGNORE_INDEX, TaskSpec, get_task
from gearshift.errors import DataError

logger = logging.getLogger("gearshift.data")

_CHUNK = 1000  # examples tokenized per tokenizer call
_NO_LIMIT = 1_000_000  # tokenizers without a real limit report a huge model_max_length

Feature = dict[str, Any]


def effective_max_length(
    tokenizer: PreTrainedTokenizerBase, max_length: int | None, model_max_positions: int | None
) -> int:
    """Return the token budget: the smallest of ``max_length``, ``model_max_positions`` and
    the tokenizer's ``model_max_length`` that are set (DataError when none is)."""
    limits = [value for value in (max_length, model_max_positions) if value is not None]
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    if tokenizer_max is not None and tokenizer_max < _NO_LIMIT:
        limits.append(int(tokenizer_max))
    if not limits:
        raise DataError("no max_length given and the tokenizer has no model_max_length; set one")
    limit = min(limits)
    if limit < 4:
        raise DataError(f"max_length must be at least 4 tokens, got {limit}")
    return limit


def encode_examples(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    task: str | TaskSpec,
    max_length: int | None = 128,
    model_max_positions: int | None = None,
) -> list[Feature]:
    """Tokenize ``examples`` for ``task``; return one unpadded feature dict per example.

    Each dict holds ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer
    makes them) as lists of ints, and ``labels``: an int (classification), a float
    (regression), or for token classification one id per token, the word's tag on its first
    sub-token and -100 on other sub-tokens and special tokens. Examples with ``label`` None and
    ``text`` tasks get no ``labels``. Inputs longer than the budget (see
    :func:`effective_max_length`) are truncated, and one warning on the ``gearshift.data``
    logger says how many.
    """
    spec = get_task(task)
    limit = effective_max_length(tokenizer, max_length, model_max_positions)
    features: list[Feature] = []
    truncated = 0
    for start in range(0, len(examples), _CHUNK):
        chunk = examples[start : start + _CHUNK]
        if spec.kind == "token_classification":
            encoded, cut = _encode_words(chunk, tokenizer, limit)
        else:
            encoded, cut = _encode_texts(chunk, tokenizer, limit, spec)
        features.extend(encoded)
        truncated += cut
    if truncated:
        logger.warning(
            "%s: %d of %d examples were longer than %d tokens and were truncated to %d tokens",
            spec.name,
            truncated,
            len(examples),
            limit,
            limit,
        )
    return features


def _encode_texts(
    chunk: Sequence[Example], tokenizer: PreTrainedTokenizerBase, limit: int, spec: TaskSpec
) -> tuple[list[Feature], int]:
    """Return the features of single-text or text-pair examples and how many were cut."""
    texts_a = [example.text_a for example in chunk]
    pairs = [example.text_b for example in chunk]
    has_pair = [text is not None for text in pairs]
    if any(has_pair) and not all(has_pair):
        raise DataError(
            f"{spec.name}: some examples have a second text (text_b) and some do not; "
            "a task's examples must be all single texts or all pairs"
        )
    texts_b = pairs if all(has_pair) and pairs else None
    encoding = tokenizer(texts_a, texts_b, truncation=False, verbose=False)
    columns = {key: list(values) for key, values in encoding.items()}
    too_long = [i for i, ids in enumerate(columns["input_ids"]) if len(ids) > limit]
    if too_long:
        cut = tokenizer(
            [texts_a[i] for i in too_long],
            [texts_b[i] for i in too_long] if texts_b is not None else None,  # type: ignore[index]
            truncation=True,
            max_length=limit,
        )
        for key, values in cut.items():
            for j, i in enumerate(too_long):
                columns[key][i] = values[j]
    features = []
    for i, example in enumerate(chunk):
        feature: Feature = {key: values[i] for key, values in columns.items()}
        if example.label is not None and spec.kind != "text":
            feature["labels"] = _sequence_label(example, spec)
        features.append(feature)
    return features, len(too_long)


def _sequence_label(example: Example, spec: TaskSpec) -> int | float:
    """Return the example's label as an int class id or a float regression target."""
    if spec.kind == "regression":
        return float(example.label)  # type: ignore[arg-type]
    if isinstance(example.label, list) or not float(example.label).is_integer():  # type: ignore[arg-type]
        raise DataError(f"{spec.name}: label {example.label!r} is not a class id")
    label = int(example.label)  # type: ignore[arg-type]
    if not 0 <= label < spec.num_labels:
        raise DataError(
            f"{spec.name}: label id {label} is out of range for {spec.num_labels} labels"
        )
    return label


def _encode_words(
    chunk: Sequence[Example], tokenizer: PreTrainedTokenizerBase, limit: int
) -> tuple[list[Feature], int]:
    """Return the features of pre-split (word-level) examples and how many were cut."""
    words = []
    for example in chunk:
        if example.words is None:
            raise DataError(
                "token classification needs examples with words (Example.words); "
                "load them with a token classification task such as conll2003"
            )
        words.append(example.words)
    encoding = tokenizer(words, is_split_into_words=True, truncation=False, verbose=False)
    columns = {key: list(values) for key, values in encoding.items()}
    word_ids = [encoding.word_ids(i) for i in range(len(chunk))]
    too_long = [i for i, ids in enumerate(columns["input_ids"]) if len(ids) > limit]
    if too_long:
        cut = tokenizer(
            [words[i] for i in too_long],
            is_split_into_words=True,
            truncation=True,
            max_length=limit,
        )
        for j, i in enumerate(too_long):
            for key, values in cut.items():
                columns[key][i] = values[j]
            word_ids[i] = cut.word_ids(j)
    features = []
    for i, example in enumerate(chunk):
        feature: Feature = {key: values[i] for key, values in columns.items()}
        if example.label is not None:
            feature["labels"] = align_word_labels(word_ids[i], example.label)  # type: ignore[arg-type]
        features.append(feature)
    return features, len(too_long)


def align_word_labels(word_ids: Sequence[int | None], word_labels: Sequence[int]) -> list[int]:
    """Return per-token labels: the word's label on the first sub-token of each word, -100
    on later sub-tokens and on special tokens (``word_ids`` None)."""
    labels = []
    previous = None
    for word_id in word_ids:
        if word_id is None or word_id == previous:
            labels.append(IGNORE_INDEX)
        else:
            labels.append(int(word_labels[word_id]))
        previous = word_id
    return labels


def make_collator(
    tokenizer: PreTrainedTokenizerBase,
    task: str | TaskSpec,
    pad_to_multiple_of: int | None = None,
    pad_to_length: int | None = None,
) -> Callable[[list[Feature]], dict[str, torch.Tensor]]:
    """Return a Hugging Face collator that pads a list of features into tensors.

    Padding is dynamic (to the longest in the batch, rounded up to ``pad_to_multiple_of``)
    unless ``pad_to_length`` is given, which pads every batch to exactly that length (for
    measurements; encode with ``max_length <= pad_to_length``). Token classification uses
    ``DataCollatorForTokenClassification``, padding labels with -100; everything else
    ``DataCollatorWithPadding``. Raises DataError when the tokenizer has no pad token.
    """
    spec = get_task(task)
    if tokenizer.pad_token is None:
        raise DataError(
            f"the tokenizer {type(tokenizer).__name__} has no padding token, so batches cannot "
            "be padded; set one first, e.g. tokenizer.pad_token = tokenizer.eos_token"
        )
    padding: bool | str = "max_length" if pad_to_length is not None else True
    if spec.kind == "token_classification":
        return DataCollatorForTokenClassification(
            tokenizer,
            padding=padding,
            max_length=pad_to_length,
            pad_to_multiple_of=pad_to_multiple_of,
            label_pad_token_id=IGNORE_INDEX,
        )
    return DataCollatorWithPadding(
        tokenizer, padding=padding, max_length=pad_to_length, pad_to_multiple_of=pad_to_multiple_of
    )


def make_dataloader(
    encoded: Sequence[Feature],
    collator: Callable[[list[Feature]], dict[str, torch.Tensor]],
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    group_by_length: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """Return a DataLoader over ``encoded`` features, batched by ``collator``.

    Shuffling draws from a ``torch.Generator`` seeded with ``seed``, so the same seed gives
    the same batches (and each new pass over the loader a new, equally reproducible order).
    ``group_by_length`` puts examples of similar length together to save padding: with
    ``shuffle``, via transformers' ``LengthGroupedSampler``; without, in order of decreasing
    length (the batch order then differs from the order of ``encoded``).
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    generator = torch.Generator()
    generator.manual_seed(seed)
    if not group_by_length:
        return DataLoader(
            encoded,  # type: ignore[arg-type]
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=collator,
            drop_last=drop_last,
        )
    lengths = [len(feature["input_ids"]) for feature in encoded]
    if shuffle:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        sampler: Any = LengthGroupedSampler(batch_size, lengths=lengths, generator=generator)
    else:
        sampler = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return DataLoader(
        encoded,  # type: ignore[arg-type]
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collator,
        drop_last=drop_last,
    )
