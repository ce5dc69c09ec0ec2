"""A task's split read and tokenized once (:class:`TaskData`), and real dev inputs for
measurement (:func:`dev_texts`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gearshift.data.load import load_examples
from gearshift.data.tasks import TaskSpec


@dataclass
class TaskData:
    """A task's split, read and tokenized once: examples, encoded features, a collator."""

    task: TaskSpec
    split: str
    examples: list
    features: list[dict]
    collator: Callable

    @classmethod
    def load(
        cls,
        task: TaskSpec,
        tokenizer,
        split: str,
        limit: int | None = None,
        max_length: int = 128,
        data_dir: str | None = None,
    ) -> TaskData:
        """Return ``split`` of ``task`` (the first ``limit`` examples), encoded for ``tokenizer``."""
        from gearshift.data.encode import encode_examples, make_collator

        examples = load_examples(task, split, data_dir=data_dir, limit=limit)
        features = encode_examples(examples, tokenizer, task, max_length=max_length)
        return cls(task, split, examples, features, make_collator(tokenizer, task))

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0):
        """Return a DataLoader over the encoded features (dynamic padding)."""
        from gearshift.data.encode import make_dataloader

        return make_dataloader(
            self.features, self.collator, batch_size=batch_size, shuffle=shuffle, seed=seed
        )


def dev_texts(
    task: TaskSpec, limit: int | None = None, data_dir: str | None = None
) -> list[str | tuple[str, str]]:
    """Return real dev inputs for measurement: a text, or a (text, text pair) tuple for pair
    tasks."""
    examples = load_examples(task, "dev", data_dir=data_dir, limit=limit)
    return [e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in examples]
