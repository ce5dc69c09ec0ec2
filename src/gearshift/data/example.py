"""The one record type every reader returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Example:
    """One labelled (or unlabelled) input.

    * sentence and sentence-pair tasks: ``text_a`` (and ``text_b`` for pairs), ``label`` an
      ``int`` class index into the task's ``label_names`` or a ``float`` regression target;
    * token classification: ``words`` holds the words, ``label`` one tag index per word and
      ``text_a`` the words joined by single spaces (handy for printing and distillation);
    * raw text: ``text_a`` only, ``label`` is None.
    """

    text_a: str
    text_b: str | None = None
    label: int | float | list[int] | None = None
    words: list[str] | None = None
