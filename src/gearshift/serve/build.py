"""``gearshift gears build``: measure each gear's dev score and latency, write the table.

:func:`build_gear_table` loads the teacher (with its plugin folders), multi-exit folders,
stacks and other model folders once each, scores every gear on the task's dev split and
times one batch of real dev sentences at each batch size (1, 8, 32 by default) on this
machine, then writes the gear table atomically. A gear's score and latency are measured,
never copied from elsewhere; run it on the machine that will serve.
"""

from __future__ import annotations

import datetime
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gearshift.errors import ConfigError
from gearshift.serve.gears import GearSet, load_gear_model, run_gear
from gearshift.serve.table import Gear, GearTable, ModelEntry, TaskInfo


class GearModule(nn.Module):
    """``model`` at ``setting`` as a plain module (so evaluate/predict can run a gear)."""

    def __init__(self, model: nn.Module, setting: dict[str, Any]) -> None:
        super().__init__()
        self.model, self.setting = model, setting

    def forward(self, **batch: Any):
        batch.pop("labels", None)
        return run_gear(self.model, self.setting, batch)


def task_info(task) -> TaskInfo:
    """The gear table's view of a registered :class:`~gearshift.data.TaskSpec`."""
    if task.kind not in ("classification", "regression"):
        raise ConfigError(
            f"task {task.name!r} is {task.kind}: gearshift serve answers classification and "
            "regression tasks"
        )
    return TaskInfo(
        task.name,
        task.kind,
        bool(task.is_pair),
        list(task.label_names) if task.label_names else None,
        task.main_metric,
    )


def _name_of(spec: str) -> tuple[str, str]:
    """``NAME=DIR`` or ``DIR`` (the folder's name) -> (name, dir)."""
    name, sep, folder = spec.partition("=")
    if not sep:
        folder, name = spec, Path(spec.rstrip("/")).name
    return name, folder


def plan_gears(
    model: str,
    plugins: list[str] = (),
    exits: list[str] = (),
    exit_thresholds: list[float] = (0.1, 0.3),
    stacks: list[str] = (),
    folders: list[str] = (),
) -> tuple[dict[str, ModelEntry], list[tuple[str, str, dict[str, Any]]]]:
    """The models to load and the (gear, model key, setting) list, before measuring."""
    named = [_name_of(p) for p in plugins]
    plugin_map = dict(named)
    if len(plugin_map) < len(named):
        raise ConfigError(
            f"plugin names {sorted(n for n, _ in named)} appear twice: name them NAME=DIR"
        )
    models = {"base": ModelEntry(model, plugin_map)}
    gears: list[tuple[str, str, dict[str, Any]]] = [
        ("full", "base", {"plugins": None} if plugin_map else {})
    ]
    gears += [(name, "base", {"plugins": name}) for name in plugin_map]
    for spec in exits:
        key, folder = _name_of(spec)
        models[key] = ModelEntry(folder)
        gears += [(f"{key}-{t:g}", key, {"exits": f"entropy:{t:g}"}) for t in exit_thresholds]
    for spec in stacks:
        key, folder = _name_of(spec)
        models[key] = ModelEntry(folder)
        gears.append((key, key, {}))  # refined below from the loaded stack's settings()
    for spec in folders:
        key, folder = _name_of(spec)
        models[key] = ModelEntry(folder)
        gears.append((key, key, {}))
    names = [g[0] for g in gears]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"gear names {sorted(dup)} appear twice: name them NAME=DIR")
    return models, gears


def _absolute(folder: str) -> str:
    """``folder`` made absolute when it exists here (a built-in name stays as it is)."""
    p = Path(folder).expanduser()
    return str(p.resolve()) if p.exists() else folder


def _stack_settings(model: nn.Module, key: str) -> list[tuple[str, dict[str, Any]]]:
    """A loaded stack's named operating points as (gear name, JSON setting)."""
    from gearshift.compose.io import encode_setting

    return [
        (key if name == "full" else f"{key}-{name}", encode_setting(setting))
        for name, setting in model.settings().items()
    ]


@torch.inference_mode()
def measure_latency_ms(
    gearset: GearSet,
    gear: Gear,
    texts: list,
    sizes: tuple[int, ...] = (1, 8, 32),
    repeats: int = 10,
    warmup: int = 2,
) -> dict[int, float]:
    """Median milliseconds of one batch of ``size`` real texts in ``gear``, per size."""
    from gearshift.measure.latency import make_batch, measure_latency

    model = gearset.models[gear.model]
    out: dict[int, float] = {}
    for size in sizes:
        batch = make_batch(gearset.tokenizer, texts, size, max_length=gearset.max_length)
        batch = {
            k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")
        }
        stats = measure_latency(
            lambda b, m=model, s=gear.setting: run_gear(m, s, dict(b)),
            batch,
            warmup=warmup,
            repeats=repeats,
        )
        out[size] = float(stats.median_ms)
    return out


def build_gear_table(
    model: str,
    task,
    output: str | Path,
    plugins: list[str] = (),
    exits: list[str] = (),
    exit_thresholds: list[float] = (0.1, 0.3),
    stacks: list[str] = (),
    folders: list[str] = (),
    dev_limit: int | None = None,
    sizes: tuple[int, ...] = (1, 8, 32),
    repeats: int = 10,
    max_length: int = 128,
    data_dir: str | None = None,
    threads: int | None = None,
) -> GearTable:
    """Measure every gear (dev score, latency per batch size) and write the table."""
    from gearshift.jobs import TaskData, dev_texts, evaluate
    from gearshift.measure.latency import fixed_threads

    info = task_info(task)
    models, planned = plan_gears(model, plugins, exits, exit_thresholds, stacks, folders)
    for entry in models.values():  # absolute, so a server started anywhere finds them
        entry.folder = _absolute(entry.folder)
        entry.plugins = {k: _absolute(v) for k, v in entry.plugins.items()}
    loaded = {k: load_gear_model(m.folder, m.plugins) for k, m in models.items()}
    gears: list[Gear] = []
    for name, key, setting in planned:
        if stacks and any(_name_of(s)[0] == key for s in stacks):
            gears += [Gear(n, key, s) for n, s in _stack_settings(loaded[key], key)]
        else:
            gears.append(Gear(name, key, setting))
    table = GearTable(
        info, models, [Gear(g.name, g.model, g.setting, latency_ms={1: 1.0}) for g in gears]
    )
    gearset = GearSet(table, models=loaded, max_length=max_length)
    data = TaskData.load(task, gearset.tokenizer, "dev", dev_limit, max_length, data_dir)
    texts = dev_texts(task, min(dev_limit or 256, 256), data_dir)
    with fixed_threads(threads):
        for g in gears:
            metrics = evaluate(GearModule(loaded[g.model], g.setting), data, batch_size=32)
            g.score = float(metrics[task.main_metric])
            g.latency_ms = measure_latency_ms(gearset, g, texts, sizes, repeats)
    final = GearTable(
        info,
        models,
        gears,
        extra={
            "dev_examples": len(data.examples),
            "threads": torch.get_num_threads(),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "torch": torch.__version__,
            },
            "command": " ".join(shlex.quote(a) for a in ["gearshift", *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
    )
    final.save(output)
    return final
