"""Operating points: the project's result rows, their JSON files, tables, frontier and plot.

Every benchmark writes rows of :class:`OperatingPoint` to ``benchmarks/results/<name>.json``
as ``{"benchmark": name, "rows": [...]}``; :func:`read_results` gathers them again.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import functools
import json
import logging
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gearshift.atomic import write_json_atomic

logger = logging.getLogger("gearshift.measure")

RESULTS_DIR = Path("benchmarks") / "results"

# The start of ``extras["seed_note"]`` on a row that draws nothing (a teacher scored as built,
# a training-free baseline, a timing): its ``seed`` is None because no seed applies.
SEED_FREE = "nothing trained with a seed"


def _command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def now_iso() -> str:
    """The local time now, ISO 8601 to the second (the ``date`` of a results row)."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


@functools.cache
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description() -> str:
    """Return one line describing the machine: CPU model, cores, torch, threads, GPU."""
    logical = os.cpu_count() or 0
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or logical
    except ImportError:  # pragma: no cover - psutil is a dependency
        physical = logical
    parts = [
        _cpu_model(),
        f"{physical} cores/{logical} threads",
        f"torch {torch.__version__}",
        f"torch threads {torch.get_num_threads()}",
    ]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    return ", ".join(parts)


@dataclass
class OperatingPoint:
    """One measured setting of one method on one task: the project's result row.

    ``flops_dynamic``: FLOPs per example on the dev set with dynamic padding;
    ``flops_128``: FLOPs per example at length 128; ``params``: parameter count;
    ``latency_ratio_b1`` / ``_b32``: latency over the unmodified model's, same run, batch 1 /
    32; ``reference_score``: the unmodified model's score. ``extras`` holds anything else
    (latency in ms, memory, notes). ``seed``: the seed of the run's training (None: not
    known, or nothing random was drawn); rows of one setting with different seeds are the
    runs a seed-to-seed spread is taken over.
    """

    task: str
    model: str
    method: str
    setting: str
    metric: str
    score: float | None = None
    flops_dynamic: float | None = None
    flops_128: float | None = None
    params: int | None = None
    latency_ratio_b1: float | None = None
    latency_ratio_b32: float | None = None
    reference_score: float | None = None
    command: str = field(default_factory=_command_line)
    date: str = field(default_factory=now_iso)
    machine: str = field(default_factory=machine_description)
    extras: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OperatingPoint:
        """Build a row from a dict; unknown keys go into ``extras``."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        extras = dict(kwargs.pop("extras", None) or {})
        extras.update({k: v for k, v in data.items() if k not in known})
        return cls(**kwargs, extras=extras)


def _row_dict(row: OperatingPoint | Mapping[str, Any]) -> dict[str, Any]:
    return row.to_dict() if isinstance(row, OperatingPoint) else dict(row)


def write_results(
    path: str | os.PathLike, rows: Iterable[OperatingPoint | Mapping[str, Any]], benchmark_name: str
) -> Path:
    """Write ``{"benchmark": name, "rows": [...]}`` to ``path`` atomically; return the path.

    The JSON goes to a temporary file in the same folder, then replaces ``path`` in one
    rename, so a reader never sees a half-written file.
    """
    payload = {"benchmark": benchmark_name, "rows": [_row_dict(r) for r in rows]}
    return write_json_atomic(path, payload, indent=2)


def read_results(directory: str | os.PathLike = RESULTS_DIR) -> list[OperatingPoint]:
    """Return the rows of every results JSON file under ``directory`` (recursively), or of
    the one results file ``directory`` names.

    Each row's ``extras["benchmark"]`` names the benchmark it came from. Files that are not
    results files (no ``rows`` list) are skipped with a warning; invalid JSON raises
    ValueError naming the file.
    """
    rows: list[OperatingPoint] = []
    where = Path(directory)
    for path in [where] if where.is_file() else sorted(where.rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON (line {exc.lineno}): {exc.msg}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            logger.warning("skipping %s: not a results file (no 'rows' list)", path)
            continue
        name = data.get("benchmark", path.stem)
        for item in data["rows"]:
            row = OperatingPoint.from_dict(item)
            row.extras.setdefault("benchmark", name)
            rows.append(row)
    return rows


# ---------------------------------------------------------------------- tables
DEFAULT_COLUMNS = (
    "task",
    "model",
    "method",
    "setting",
    "metric",
    "score",
    "reference_score",
    "flops_dynamic",
    "flops_128",
    "params",
    "latency_ratio_b1",
    "latency_ratio_b32",
)


def _get(row: OperatingPoint | Mapping[str, Any], key: str) -> Any:
    """A row's field, or an ``extras`` entry (``key`` or ``extras.key``)."""
    d = row if isinstance(row, Mapping) else None
    if key.startswith("extras."):
        key = key[len("extras.") :]
        extras = d.get("extras", {}) if d is not None else row.extras
        return (extras or {}).get(key)
    if d is not None:
        return d[key] if key in d else (d.get("extras") or {}).get(key)
    if hasattr(row, key):
        return getattr(row, key)
    return row.extras.get(key)


def format_flops(value: float) -> str:
    """``2.91e9`` -> ``2.91 GFLOPs``, ``4.5e7`` -> ``45.0 MFLOPs``."""
    if abs(value) >= 1e9:
        return f"{value / 1e9:.2f} GFLOPs"
    if abs(value) >= 1e6:
        return f"{value / 1e6:.1f} MFLOPs"
    if abs(value) >= 1e3:
        return f"{value / 1e3:.1f} KFLOPs"
    return f"{value:.0f} FLOPs"


def format_value(column: str, value: Any) -> str:
    """Format one table cell: FLOPs in G/MFLOPs, params in M, ratios with 2 decimals."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value).replace("|", "\\|")
    if column.startswith("flops"):
        return format_flops(value)
    if column == "params" or column.endswith("params"):
        return f"{value / 1e6:.2f}M"
    if "ratio" in column:
        return f"{value:.2f}"
    if "diff" in column:
        return f"{value:.1e}"
    if column.endswith("_ms") or "_ms_" in column:
        return f"{value:.2f}"
    if column.endswith("bytes"):
        return f"{value / 2**20:.1f} MiB"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(
    rows: Sequence[OperatingPoint | Mapping[str, Any]], columns: Sequence[str] | None = None
) -> str:
    """Return a Markdown table of ``rows`` with ``columns`` (default: the main fields).

    Columns may name ``extras`` entries too (``latency_ms_b1`` or ``extras.latency_ms_b1``).
    """
    columns = list(columns or DEFAULT_COLUMNS)
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        cells = [format_value(c.removeprefix("extras."), _get(row, c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- frontier and plot
def pareto_frontier(
    rows: Iterable[OperatingPoint | Mapping[str, Any]],
    cost: str = "flops_dynamic",
    score: str = "score",
) -> list[OperatingPoint | Mapping[str, Any]]:
    """Return the rows no other row beats (lower or equal cost and higher score), by cost.

    Rows missing the cost or the score are left out. Of rows with equal cost only the best
    score can be on the frontier; exact ties keep the first row.
    """
    usable = [r for r in rows if _get(r, cost) is not None and _get(r, score) is not None]
    # Cheapest first; at equal cost the best score first, so it is the one kept.
    ordered = sorted(usable, key=lambda r: (_get(r, cost), -_get(r, score)))
    frontier = []
    best = float("-inf")
    for r in ordered:
        if _get(r, score) > best:
            frontier.append(r)
            best = _get(r, score)
    return frontier


def plot_tradeoff(
    rows: Sequence[OperatingPoint | Mapping[str, Any]],
    path: str | os.PathLike,
    x: str = "flops_dynamic",
    y: str = "score",
    title: str | None = None,
) -> Path:
    """Plot ``y`` against ``x``, one series per method, with the Pareto frontier; return path.

    Draws on an Agg canvas (no display needed, pyplot's global backend left alone). The x
    axis is logarithmic when the costs span more than a factor of 10.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    usable = [r for r in rows if _get(r, x) is not None and _get(r, y) is not None]
    if not usable:
        raise ValueError(f"no row has both {x!r} and {y!r} to plot")
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    methods: dict[str, list] = {}
    for r in usable:
        methods.setdefault(str(_get(r, "method")), []).append(r)
    many = len(methods) > 10  # past the default cycle: one tab20 colour each, legend outside
    if many:
        from matplotlib import colormaps

        fig.set_size_inches(10, 4.5)
        ax.set_prop_cycle(color=colormaps["tab20"].colors)
    for method, group in methods.items():
        group = sorted(group, key=lambda r: _get(r, x))
        ax.plot(
            [_get(r, x) for r in group], [_get(r, y) for r in group], "o-", label=method, alpha=0.8
        )
    front = pareto_frontier(usable, cost=x, score=y)
    ax.step(
        [_get(r, x) for r in front],
        [_get(r, y) for r in front],
        where="post",
        color="black",
        linestyle="--",
        linewidth=1,
        label="Pareto frontier",
    )
    xs = [_get(r, x) for r in usable]
    if min(xs) > 0 and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("FLOPs per example" if x.startswith("flops") else x)
    ax.set_ylabel(y if y != "score" else str(_get(usable[0], "metric") or "score"))
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if many:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_points(rows: list[dict], reference: float | None = None) -> list[dict]:
    """One point per (method, setting) of a task's rows for its plot (seeds averaged, not drawn
    as a vertical run of points): the mean score over the rows measured against
    ``reference`` (this run's teacher) where the setting has any, else over its other rows
    (an earlier teacher's, or every row when ``reference`` is None); the cost fields are the
    first row's."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["setting"]), []).append(r)
    points = []
    for group in groups.values():
        mine = [
            r
            for r in group
            if reference is not None
            and r.get("reference_score") is not None
            and abs(r["reference_score"] - reference) < 1e-9
        ]
        use = mine or group
        points.append({**use[0], "score": sum(r["score"] for r in use) / len(use)})
    return points


class ResultsSink:
    """One benchmark's results file, kept up to date as rows arrive (resumable runs).

    Loads the rows already in ``path`` (those of ``benchmark``); :meth:`add` dates the rows
    that carry no ``date`` (now), replaces rows of
    the same (task, method, setting) and rewrites the file atomically, so a killed run loses
    at most what it was measuring; :meth:`has` tells a resuming run what is recorded.
    ``new`` holds the rows added by this run. A row with a ``seed`` replaces only rows of
    that seed (or of an unknown one), so runs of one setting with different seeds stand
    side by side; a row without one replaces every seed of its setting, as before.
    """

    def __init__(self, path: str | os.PathLike, benchmark: str) -> None:
        self.path, self.benchmark = Path(path), benchmark
        self.new: list[dict] = []
        self.rows: list[dict] = self._read()

    def _read(self) -> list[dict]:
        rows = []
        if self.path.is_file():
            for r in read_results(self.path):
                if r.extras.get("benchmark") == self.benchmark:
                    d = r.to_dict()
                    d["extras"].pop("benchmark", None)
                    rows.append(d)
        return rows

    @staticmethod
    def key(row: Mapping[str, Any]) -> tuple:
        return (row["task"], row["method"], row["setting"])

    def has(self, task: str, method: str, setting: str, seed: int | None = None) -> bool:
        """Whether a row of (task, method, setting) is recorded (of ``seed``, if given)."""
        return any(
            self.key(r) == (task, method, setting) and (seed is None or r.get("seed") == seed)
            for r in self.rows
        )

    @classmethod
    def replaces(cls, new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
        """Whether ``new`` supersedes ``old``: the same (task, method, setting) and the same
        seed, or either seed unknown (None)."""
        if cls.key(new) != cls.key(old):
            return False
        a, b = new.get("seed"), old.get("seed")
        return a is None or b is None or a == b

    def add(self, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        rows = [dict(rows)] if isinstance(rows, Mapping) else [dict(r) for r in rows]
        for r in rows:  # a row without a date would take the time of the next run's read
            if not r.get("date"):
                r["date"] = now_iso()
        self.new += rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Re-read under a lock: another run of this benchmark (say, one task per core) may
        # have written rows since this one started; they are kept, not overwritten.
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            kept = [r for r in self._read() if not any(self.replaces(n, r) for n in rows)]
            self.rows = kept + rows
            write_results(self.path, self.rows, self.benchmark)
