"""What a step setting is: how many steps a pass runs and with which solver."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gearshift.errors import ConfigError

SOLVERS = ("euler", "heun")


@dataclass(frozen=True)
class StepSetting:
    """How many steps a pass runs, and with which solver (``n_steps`` None: one per layer)."""

    n_steps: int | None = None
    solver: str = "euler"

    def __str__(self) -> str:
        n = "L" if self.n_steps is None else str(self.n_steps)
        return n if self.solver == "euler" else f"{n}:{self.solver}"


def parse_step_setting(value: Any) -> StepSetting:
    """``3``, ``"3"``, ``"3:heun"``, ``(3, "heun")``, ``{"n_steps": 3, "solver": "heun"}`` or a
    StepSetting -> StepSetting; ConfigError says which forms exist."""
    if isinstance(value, StepSetting):
        return value
    try:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, int):
            return StepSetting(value)
        if isinstance(value, str):
            n, _, solver = value.partition(":")
            return StepSetting(None if n in ("", "L") else int(n), solver or "euler")
        if isinstance(value, Mapping):
            return StepSetting(value.get("n_steps"), value.get("solver", "euler"))
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return StepSetting(value[0], value[1])
    except (TypeError, ValueError):
        pass
    raise ConfigError(
        f"steps setting {value!r} is not understood: give N (an int), 'N:heun', "
        "(N, solver) or {'n_steps': N, 'solver': ...}"
    )
