"""gearshift: make pre-trained transformer language models cheaper to run.

``gearshift.load(path)`` loads any model folder (see :mod:`gearshift.api`);
``gearshift.predict(model, texts)`` gives label names and probabilities (or scores). Both
are imported on first use, so ``import gearshift`` stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {"load": "gearshift.api", "predict": "gearshift.api"}


def __getattr__(name: str) -> Any:
    """Return a lazily imported top-level name (see ``_LAZY``)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gearshift' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["__version__", "load", "predict"]
