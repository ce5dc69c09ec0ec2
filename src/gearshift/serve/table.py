"""The gear table: a model's operating points, measured once, read by the server.

A gear table is one JSON file::

    {
      "kind": "gear-table", "format_version": 1,
      "task": {"name": "sst2", "kind": "classification", "pair": false,
               "label_names": ["negative", "positive"], "metric": "accuracy"},
      "models": {"base": {"folder": "runs/teacher", "plugins": {"k4": "runs/k4"}}},
      "gears": [
        {"name": "full", "model": "base", "setting": {}, "engine": "torch",
         "score": 91.3, "latency_ms": {"1": 4.1, "8": 11.0, "32": 38.2}},
        {"name": "k4", "model": "base", "setting": {"plugins": "k4"}, "engine": "torch",
         "score": 90.1, "latency_ms": {"1": 2.0, "8": 5.1, "32": 16.0}}
      ],
      "machine": {...}, "command": "...", "date": "..."
    }

``models`` are loaded once each at start (a folder, optionally with plugin folders loaded
onto it); ``gears`` name a model and the per-call ``setting`` that selects the operating
point on it. ``latency_ms`` maps a batch size to the measured latency of one batch;
:meth:`Gear.latency` interpolates between the measured sizes (linearly, and linearly beyond
the largest). :func:`read_gear_table` checks everything and names the field that is wrong.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gearshift.atomic import write_json_atomic
from gearshift.errors import ConfigError

KIND = "gear-table"
FORMAT_VERSION = 1
TASK_KINDS = ("classification", "regression")


class GearTableError(ConfigError):
    """A gear table that cannot be used; the message names the field and the fix."""


@dataclass
class Gear:
    """One operating point: ``model`` (a key of the table's models) run with ``setting``."""

    name: str
    model: str
    setting: dict[str, Any] = field(default_factory=dict)
    engine: str = "torch"
    score: float | None = None
    latency_ms: dict[int, float] = field(default_factory=dict)

    def latency(self, batch_size: int) -> float:
        """Predicted milliseconds of one batch of ``batch_size`` (interpolated)."""
        if not self.latency_ms:
            raise GearTableError(f"gear {self.name!r} has no latency_ms: measure it first")
        sizes = sorted(self.latency_ms)
        b = max(1, int(batch_size))
        if b in self.latency_ms:
            return self.latency_ms[b]
        if len(sizes) == 1:
            return self.latency_ms[sizes[0]] * b / sizes[0]
        if b < sizes[0]:
            lo, hi = sizes[0], sizes[1]
        elif b > sizes[-1]:
            lo, hi = sizes[-2], sizes[-1]
        else:
            hi = next(s for s in sizes if s > b)
            lo = max(s for s in sizes if s < b)
        slope = (self.latency_ms[hi] - self.latency_ms[lo]) / (hi - lo)
        return max(1e-3, self.latency_ms[lo] + slope * (b - lo))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "setting": dict(self.setting),
            "engine": self.engine,
            "score": self.score,
            "latency_ms": {str(k): v for k, v in sorted(self.latency_ms.items())},
        }


@dataclass
class ModelEntry:
    """A model loaded once: a folder, plus plugin folders (name -> folder) loaded onto it."""

    folder: str
    plugins: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"folder": self.folder}
        if self.plugins:
            out["plugins"] = dict(self.plugins)
        return out


@dataclass
class TaskInfo:
    """What the server needs to know of the task: output kind, pair input, label names."""

    name: str
    kind: str = "classification"
    pair: bool = False
    label_names: list[str] | None = None
    metric: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "pair": self.pair,
            "label_names": self.label_names,
            "metric": self.metric,
        }


@dataclass
class GearTable:
    """The task, the models to load and the gears, most accurate first."""

    task: TaskInfo
    models: dict[str, ModelEntry]
    gears: list[Gear]
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gears.sort(key=lambda g: -(g.score if g.score is not None else float("-inf")))

    def gear(self, name: str) -> Gear:
        """The gear called ``name``; GearTableError lists the known ones."""
        for g in self.gears:
            if g.name == name:
                return g
        raise GearTableError(f"no gear named {name!r} (gears: {', '.join(self.names)})")

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.gears]

    @property
    def reference(self) -> Gear:
        """The full model: the gear named ``full`` (``gearshift gears build`` names the
        teacher as it is so), else the most accurate gear. A faster gear that happens to
        score higher on dev (int8 sometimes does) is not the reference a benchmark's
        "static-full" policy or its capacity means."""
        for g in self.gears:
            if g.name == "full":
                return g
        return self.gears[0]

    def fastest(self, batch_size: int = 1) -> Gear:
        return min(self.gears, key=lambda g: g.latency(batch_size))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "task": self.task.to_dict(),
            "models": {k: m.to_dict() for k, m in self.models.items()},
            "gears": [g.to_dict() for g in self.gears],
            **self.extra,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON atomically; returns the path."""
        return write_json_atomic(path, self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Any, where: str = "the gear table") -> GearTable:
        return parse_gear_table(data, where)


def _need(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise GearTableError(f"{where}: {message}")


def parse_gear_table(data: Any, where: str = "the gear table") -> GearTable:
    """Check ``data`` (a parsed gear table) and return a :class:`GearTable`."""
    _need(isinstance(data, dict), where, "must be a JSON object")
    _need(
        data.get("kind") == KIND,
        where,
        f"field 'kind' must be {KIND!r} (got {data.get('kind')!r}); write one with "
        "`gearshift gears build`",
    )
    version = data.get("format_version", FORMAT_VERSION)
    _need(
        isinstance(version, int) and version <= FORMAT_VERSION,
        where,
        f"field 'format_version' is {version!r}; this gearshift reads up to {FORMAT_VERSION}",
    )
    t = data.get("task")
    _need(isinstance(t, dict), where, "field 'task' must be an object with 'name' and 'kind'")
    _need(isinstance(t.get("name"), str), where, "field 'task.name' must be a string")
    kind = t.get("kind", "classification")
    _need(kind in TASK_KINDS, where, f"field 'task.kind' must be one of {TASK_KINDS}, got {kind!r}")
    labels = t.get("label_names")
    _need(
        labels is None or (isinstance(labels, list) and all(isinstance(x, str) for x in labels)),
        where,
        "field 'task.label_names' must be a list of strings or null",
    )
    _need(isinstance(t.get("pair", False), bool), where, "field 'task.pair' must be true or false")
    task = TaskInfo(t["name"], kind, t.get("pair", False), labels, t.get("metric"))

    models_raw = data.get("models")
    _need(
        isinstance(models_raw, dict) and models_raw,
        where,
        "field 'models' must be a non-empty object {name: {folder, plugins?}}",
    )
    models: dict[str, ModelEntry] = {}
    for key, m in models_raw.items():
        at = f"models.{key}"
        _need(isinstance(m, dict), where, f"field '{at}' must be an object")
        _need(isinstance(m.get("folder"), str), where, f"field '{at}.folder' must be a string")
        plugins = m.get("plugins", {}) or {}
        _need(
            isinstance(plugins, dict) and all(isinstance(v, str) for v in plugins.values()),
            where,
            f"field '{at}.plugins' must map plugin names to folders",
        )
        models[key] = ModelEntry(m["folder"], dict(plugins))

    gears_raw = data.get("gears")
    _need(
        isinstance(gears_raw, list) and gears_raw, where, "field 'gears' must be a non-empty list"
    )
    gears: list[Gear] = []
    seen: set[str] = set()
    for i, g in enumerate(gears_raw):
        at = f"gears[{i}]"
        _need(isinstance(g, dict), where, f"field '{at}' must be an object")
        name = g.get("name")
        _need(
            isinstance(name, str) and name, where, f"field '{at}.name' must be a non-empty string"
        )
        _need(name not in seen, where, f"field '{at}.name': gear {name!r} appears twice")
        seen.add(name)
        _need(
            g.get("model") in models,
            where,
            f"field '{at}.model' must name one of the models ({', '.join(models)}), got "
            f"{g.get('model')!r}",
        )
        setting = g.get("setting", {}) or {}
        _need(isinstance(setting, dict), where, f"field '{at}.setting' must be an object")
        score = g.get("score")
        _need(
            score is None or isinstance(score, int | float),
            where,
            f"field '{at}.score' must be a number or null",
        )
        lat = g.get("latency_ms")
        _need(
            isinstance(lat, dict) and lat,
            where,
            f"field '{at}.latency_ms' must map batch sizes to milliseconds, e.g. "
            '{"1": 4.0, "8": 11.0}; measure with `gearshift gears build`',
        )
        latency: dict[int, float] = {}
        for size, ms in lat.items():
            try:
                b = int(size)
            except (TypeError, ValueError):
                b = 0
            _need(b >= 1, where, f"field '{at}.latency_ms' has batch size {size!r}: use 1, 8, ...")
            _need(
                isinstance(ms, int | float) and ms > 0,
                where,
                f"field '{at}.latency_ms.{size}' must be a positive number of milliseconds",
            )
            latency[b] = float(ms)
        gears.append(
            Gear(
                name,
                g["model"],
                dict(setting),
                str(g.get("engine", "torch")),
                None if score is None else float(score),
                latency,
            )
        )
    extra = {
        k: v
        for k, v in data.items()
        if k not in ("kind", "format_version", "task", "models", "gears")
    }
    return GearTable(task, models, gears, extra)


def read_gear_table(path: str | os.PathLike) -> GearTable:
    """Read and check the gear table at ``path``; relative model folders are taken from the
    table's own folder. Raises GearTableError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise GearTableError(
            f"gear table {path} does not exist: write one with `gearshift gears build`"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GearTableError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}") from exc
    table = parse_gear_table(data, str(path))
    for entry in table.models.values():
        entry.folder = _relative_to(path.parent, entry.folder)
        entry.plugins = {k: _relative_to(path.parent, v) for k, v in entry.plugins.items()}
    return table


def _relative_to(base: Path, folder: str) -> str:
    p = Path(folder).expanduser()
    if p.is_absolute() or not (base / p).exists():
        return str(p)
    return str(base / p)
