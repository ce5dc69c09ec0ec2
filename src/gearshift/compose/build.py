"""Building a stack from parts: model edits in order, then plan providers, then one folder.

:func:`build_stack` is what ``gearshift stack`` runs. ``model`` may be a plain model, a
method's folder (a slim multi-exit model brings its exits, a stack brings its providers) or
a checkpoint; the edits are applied to its base in the order given (factorize, then int8:
quantizing a factorized model quantizes its factors); plugins, exits and steps attach on top.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gearshift.errors import ConfigError
from gearshift.runtime.io import read_meta
from gearshift.runtime.model import Transformer
from gearshift.runtime.stack import Stack

logger = logging.getLogger("gearshift.compose")


@dataclass
class StackRecipe:
    """What a stack is made of (recorded in its folder as ``recipe``)."""

    model: str
    factorize: str | None = None  # "METHOD:RATIO", e.g. "svdllm:2"
    int8: bool = False
    plugins: list[str] = field(default_factory=list)  # "DIR" or "NAME=DIR"
    exits: str | None = None  # an exits folder, a multi-exit model or a stack with exits
    steps: list[str] = field(default_factory=list)  # the step settings offered, e.g. "3"
    default: dict[str, Any] = field(default_factory=dict)
    calibration_examples: int = 256

    def describe(self) -> str:
        """The stack's parts in order, e.g. ``svdllm:2 + plugin k4-ffn + exits + int8``."""
        parts = []
        if self.factorize:
            parts.append(self.factorize)
        parts += [f"plugin {Path(p.partition('=')[2] or p).name}" for p in self.plugins]
        if self.exits:
            parts.append("exits")
        if self.steps:
            parts.append("steps " + "/".join(self.steps))
        if self.int8:
            parts.append("int8")
        return " + ".join(parts) or "base"


def parse_factorize(spec: str) -> tuple[str, float]:
    """``"svdllm:2"`` -> ("svdllm", 2.0); ConfigError names the form."""
    method, _, ratio = spec.partition(":")
    try:
        return method, float(ratio)
    except ValueError:
        raise ConfigError(
            f"--factorize {spec!r} is not METHOD:RATIO (e.g. svdllm:2, svd:4)"
        ) from None


def load_parts(model: str) -> tuple[Transformer, dict[str, Any], list[tuple[str, Any]]]:
    """(base, base gearshift.json or {}, providers it brings) of a model folder or name."""
    from gearshift.api import load

    loaded = load(model)
    meta: dict[str, Any] = {}
    folder = Path(str(model))
    if (folder / "gearshift.json").is_file():
        meta = read_meta(folder)
    if isinstance(loaded, Stack):
        return loaded.base, meta, list(loaded.providers.items())
    return loaded, meta, []


def apply_edits(base: Transformer, recipe: StackRecipe, task: Any, tokenizer: Any) -> Transformer:
    """The recipe's model edits on a copy of ``base``, in order: factorize, then int8."""
    model = copy.deepcopy(base)
    if recipe.factorize:
        from gearshift.methods.factorize.calibration import calibration_batches
        from gearshift.methods.factorize.compress import compress
        from gearshift.methods.factorize.config import FactorizeConfig

        method, ratio = parse_factorize(recipe.factorize)
        config = FactorizeConfig(method=method, ratio=ratio, progress=False)
        config.validate()
        cal = None
        if config.needs_gram or config.needs_fisher:
            if task is None:
                raise ConfigError(
                    f"--factorize {recipe.factorize} needs calibration data: the model records "
                    "no task; pass --task"
                )
            cal = calibration_batches(tokenizer, "task", task, recipe.calibration_examples)
        model, _ = compress(model, config, cal)
    if recipe.int8:
        from gearshift.runtime import quantize_int8

        model = quantize_int8(model)
    return model.eval()


def build_stack(
    recipe: StackRecipe,
    output: str | os.PathLike | None = None,
    task: Any = None,
    link_base: bool = False,
) -> Stack:
    """Build the stack ``recipe`` describes; saved to ``output`` when given. Returns it."""
    from gearshift.compose.io import save_stack
    from gearshift.methods.plugins.model import Plugins, load_plugin
    from gearshift.methods.slim.model import Exits
    from gearshift.methods.steps.model import Steps
    from gearshift.runtime import load_tokenizer

    base, meta, brought = load_parts(recipe.model)
    try:
        tokenizer = load_tokenizer(recipe.model)
    except Exception as exc:  # a model folder saved without its tokenizer
        if recipe.factorize and parse_factorize(recipe.factorize)[0] != "svd":
            raise ConfigError(
                f"{recipe.model} has no tokenizer, and --factorize {recipe.factorize} needs "
                "one for its calibration data: save the model with its tokenizer"
            ) from exc
        logger.warning("%s has no tokenizer; the stack is saved without one", recipe.model)
        tokenizer = None
    edited = apply_edits(base, recipe, task, tokenizer)
    stack = Stack(edited)
    for name, provider in brought:  # what the model folder brought (e.g. slim's exits)
        if name == "exits" and recipe.exits:
            continue  # replaced by --exits
        stack.attach(provider, name)
    if recipe.plugins:
        plugins = stack.providers["plugins"] if "plugins" in stack.providers else None
        if plugins is None:
            plugins = stack.attach(Plugins())
        for spec in recipe.plugins:
            name, _, folder = spec.rpartition("=") if "=" in spec else ("", "", spec)
            plugin = load_plugin(folder, edited)
            plugins.add(name or plugin.config.name, plugin.to(next(edited.parameters()).device))
    if recipe.exits:
        _, _, providers = load_parts(recipe.exits) if _is_model(recipe.exits) else (None, None, [])
        exits = next((p for n, p in providers if p.kind == "exits"), None)
        if exits is None:
            exits = Exits.from_pretrained(recipe.exits, edited)
        if "exits" in stack.providers:
            stack.detach("exits")
        stack.attach(copy.deepcopy(exits), "exits")
    if recipe.steps:
        stack.attach(Steps(recipe.steps), "steps")
    stack.default_setting = recipe.default
    if output is not None:
        from dataclasses import asdict

        save_stack(
            stack,
            output,
            tokenizer=tokenizer,
            base_meta=meta,
            link_base=recipe.model
            if link_base and not recipe.factorize and not recipe.int8
            else None,
            extra={"recipe": asdict(recipe), "describe": recipe.describe()},
        )
    return stack


def _is_model(folder: str) -> bool:
    from gearshift.runtime.io import folder_kind

    return folder_kind(folder) not in (None, "exits")


def parse_default(values: Sequence[str]) -> dict[str, Any]:
    """``["plugins=k4", "exits=entropy:0.3"]`` -> {"plugins": "k4", "exits": "entropy:0.3"}."""
    out = {}
    for v in values:
        name, eq, value = v.partition("=")
        if not eq:
            raise ConfigError(f"--default {v!r} is not PROVIDER=VALUE (e.g. plugins=k4-ffn)")
        out[name] = value
    return out
