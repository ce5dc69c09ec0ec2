"""A per-thread run-time setting (the active plugin, number of steps, exit criterion).

Methods that switch between operating points keep the choice in a
:class:`contextvars.ContextVar`, so each thread (or asyncio task) serving requests has its
own and switching needs no reload. :class:`ThreadSetting` wraps that: ``get`` (the thread's
value, else the default), ``set``, ``using`` (a context manager), and deep copies that
start unset (a ContextVar itself cannot be copied).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_UNSET = object()


class ThreadSetting:
    """One value per thread/context, falling back to ``default``."""

    def __init__(self, name: str, default: Any = None) -> None:
        self.name, self.default = name, default
        self._var: ContextVar[Any] = ContextVar(f"gearshift_{name}_{id(self)}", default=_UNSET)

    def get(self) -> Any:
        value = self._var.get()
        return self.default if value is _UNSET else value

    def set(self, value: Any) -> None:
        self._var.set(value)

    @contextmanager
    def using(self, value: Any) -> Iterator[None]:
        token = self._var.set(value)
        try:
            yield
        finally:
            self._var.reset(token)

    def __deepcopy__(self, memo: dict) -> ThreadSetting:
        return ThreadSetting(self.name, self.default)
