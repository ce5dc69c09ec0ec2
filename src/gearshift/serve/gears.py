"""Loading a gear table's models once and running a batch in one gear.

:class:`GearSet` loads every model of a :class:`~gearshift.serve.table.GearTable` once and
keeps one tokenizer. Every model is a :class:`~gearshift.runtime.stack.Stack` (the compose
API): a stack folder as saved, a multi-exit folder (a stack with an exits provider), a plain
model folder (int8, factorized, a teacher) wrapped in a stack of no provider, and a model
with plugin folders as a :class:`~gearshift.methods.plugins.PluginModel` (a stack with a
plugins provider). A gear is then a per-call setting on an already loaded stack,
``stack(**batch, setting=gear.setting)``, so shifting gears never reloads anything.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import torch
from torch import nn

from gearshift.errors import ConfigError
from gearshift.serve.table import GearTable, GearTableError

logger = logging.getLogger("gearshift.serve")


def load_gear_model(folder: str, plugins: dict[str, str] | None = None) -> nn.Module:
    """Load the model in ``folder`` once, as a Stack; with ``plugins`` (name -> folder)
    the plugins are loaded onto its base (a PluginModel)."""
    from gearshift.compose import Stack, is_stack_folder, load_stack
    from gearshift.methods.slim.model import is_multi_exit_folder, load_multi_exit
    from gearshift.runtime import load_pretrained

    def kind_is(test) -> bool:
        try:
            return bool(test(folder))
        except Exception:  # an HF folder or a built-in name has no gearshift.json
            return False

    if kind_is(is_stack_folder):
        model = load_stack(folder)
    elif kind_is(is_multi_exit_folder):
        model = load_multi_exit(folder)
    else:
        model = load_pretrained(folder)
    if plugins:
        from gearshift.methods.plugins import PluginModel

        if isinstance(model, Stack):
            raise GearTableError(
                f"plugins are loaded onto a plain model; {folder} is already a stack: save "
                "the plugins into the stack (gearshift compose) or point 'folder' at its base"
            )
        pm = PluginModel(model)
        for name, plugin_folder in plugins.items():
            pm.load_plugin(name, plugin_folder)
        model = pm
    elif not isinstance(model, Stack):
        model = Stack(model)
    return model.eval()


def check_setting(model: nn.Module, setting: dict[str, Any], gear: str) -> None:
    """Raise GearTableError when ``model`` cannot run ``setting`` (names the gear and why)."""
    try:
        model.resolve(setting)
    except ConfigError as exc:
        raise GearTableError(f"gear {gear!r}: setting {setting}: {exc}") from exc


def run_gear(model: nn.Module, setting: dict[str, Any], batch: dict[str, torch.Tensor]):
    """One forward of ``batch`` through the stack ``model`` at ``setting``."""
    return model(**batch, setting=setting)


class GearSet:
    """A gear table's models, each loaded once, and the tokenizer; runs texts in a gear."""

    def __init__(
        self,
        table: GearTable,
        models: dict[str, nn.Module] | None = None,
        tokenizer: Any = None,
        max_length: int = 128,
    ) -> None:
        from gearshift.runtime import load_tokenizer

        self.table = table
        self.max_length = max_length
        if models is None:
            models = {}
            for key, entry in table.models.items():
                logger.info("loading model %s from %s", key, entry.folder)
                models[key] = load_gear_model(entry.folder, entry.plugins)
        self.models = models
        for gear in table.gears:
            if gear.model not in self.models:
                raise GearTableError(f"gear {gear.name!r} names model {gear.model!r}, not loaded")
            check_setting(self.models[gear.model], gear.setting, gear.name)
        if tokenizer is None:
            first = next(iter(table.models.values()))
            tokenizer = load_tokenizer(first.folder)
        self.tokenizer = tokenizer
        self._lock = threading.Lock()
        config = getattr(next(iter(self.models.values())), "config", None)
        head = getattr(config, "head", None)
        self.label_names = table.task.label_names or getattr(head, "label_names", None)

    @property
    def names(self) -> list[str]:
        return self.table.names

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            texts,
            pairs,
            truncation=True,
            max_length=self.max_length,
            padding="longest",
            return_tensors="pt",
        )
        return {
            k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")
        }

    @torch.inference_mode()
    def predict(
        self, gear: str, texts: list[str], pairs: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Answers for ``texts`` (and ``pairs``) in gear ``gear``: one dict per text with
        ``label`` and ``probabilities`` (classification) or ``score`` (regression)."""
        g = self.table.gear(gear)
        if self.table.task.pair and pairs is None:
            raise ConfigError(f"task {self.table.task.name!r} takes text pairs: pass text_pairs")
        batch = self.encode(texts, pairs)
        with self._lock:  # one model call at a time (the worker thread; build/tests too)
            logits = run_gear(self.models[g.model], g.setting, batch).logits
        logits = logits.float()
        out: list[dict[str, Any]] = []
        if self.table.task.kind == "regression":
            for v in logits.reshape(len(texts), -1)[:, 0].tolist():
                out.append({"score": v})
            return out
        probs = torch.softmax(logits, dim=-1)
        names = self.label_names or [str(i) for i in range(probs.shape[-1])]
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append(
                {
                    "label": names[best],
                    "label_id": best,
                    "probabilities": {names[i]: p for i, p in enumerate(row)},
                }
            )
        return out
