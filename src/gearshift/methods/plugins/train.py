"""Training plugins with the base model frozen, on the project's Trainer (resume, progress).

- Stage A (plugin pre-training): the pre-trained model, raw text (WikiText-2 and task
  sentences, no labels); loss = masked MSE between the final hidden states with and without
  the plugin.
- Stage C (task adaptation): the fine-tuned teacher, its task's training inputs (labels are
  not used); loss = the same hidden-state MSE against the uncompressed teacher, optionally
  plus ``kl_weight`` * KL(teacher || student) on the logits (MSE for a regression head).

Only the plugin's parameters are optimised and checkpointed: the base model is not a
submodule of the module the Trainer sees, so it is neither trained nor saved, and it stays in
eval mode (no dropout, so its targets are exact).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gearshift.errors import ConfigError
from gearshift.measure.flops import model_inputs
from gearshift.runtime.model import Transformer
from gearshift.train import TrainConfig, Trainer, hidden_mse, kd_kl, regression_mse

from .model import Plugin, save_plugin, write_plugin_files

logger = logging.getLogger("gearshift.plugins")

STAGES = ("A", "C")
PLUGIN_DIR = "plugin"  # <output_dir>/plugin: the final plugin folder


class TargetCache:
    """The frozen base's outputs (final hidden states and logits) per example, so that every
    epoch, and every plugin trained on the same base and data, runs the base's reference
    pass only once per example.

    Keys are the example's real tokens (input ids and token types, pads dropped), so any
    batching finds them. Entries hold the real positions only (float32 on the CPU). The base
    is frozen and in eval mode, so a cached target equals a recomputed one up to the
    rounding of a different batch's padding.
    """

    def __init__(self) -> None:
        self._rows: dict[bytes, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    @staticmethod
    def _keys(inputs: Mapping[str, torch.Tensor], keep: torch.Tensor) -> list[bytes]:
        ids = inputs["input_ids"].cpu()
        types = inputs.get("token_type_ids")
        types = types.cpu() if types is not None else None
        keys = []
        for i in range(ids.shape[0]):
            row = ids[i][keep[i]].numpy().tobytes()
            if types is not None:
                row += b"|" + types[i][keep[i]].numpy().tobytes()
            keys.append(row)
        return keys

    def reference(
        self, base: Transformer, inputs: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(last_hidden_state, logits)`` of ``base`` on ``inputs``, from the cache where
        every row is in it, else from one pass of the base (whose rows are then stored)."""
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        keep = (
            mask.bool().cpu() if mask is not None else torch.ones_like(ids, dtype=torch.bool).cpu()
        )
        keys = self._keys(inputs, keep)
        if all(k in self._rows for k in keys):
            self.hits += len(keys)
            B, n = ids.shape
            first = self._rows[keys[0]]
            hidden = torch.zeros(B, n, first[0].shape[-1])
            logits = None
            if first[1] is not None:
                token_level = first[1].dim() == 2
                shape = (B, n, first[1].shape[-1]) if token_level else (B, *first[1].shape)
                logits = torch.zeros(shape)
            for i, k in enumerate(keys):
                h, lg = self._rows[k]
                hidden[i][keep[i]] = h
                if logits is not None:
                    if token_level:
                        logits[i][keep[i]] = lg
                    else:
                        logits[i] = lg
            return hidden.to(ids.device), (logits.to(ids.device) if logits is not None else None)
        self.misses += len(keys)
        with torch.no_grad():
            ref = base(**inputs)
        hidden = ref.last_hidden_state.detach().float().cpu()
        logits = ref.logits.detach().float().cpu() if ref.logits is not None else None
        token_level = logits is not None and logits.dim() == 3
        for i, k in enumerate(keys):
            lg = None
            if logits is not None:
                lg = logits[i][keep[i]].clone() if token_level else logits[i].clone()
            self._rows[k] = (hidden[i][keep[i]].clone(), lg)
        return ref.last_hidden_state.detach(), (
            ref.logits.detach() if ref.logits is not None else None
        )


class PluginDistillation(nn.Module):
    """The module the Trainer trains: the plugin, and its loss against the frozen base.

    ``forward(batch)`` returns ``(loss, {"mse": ..., "kl": ...})``. ``layerwise=True``
    averages the MSE over every layer's output instead of the last one only. ``cache`` (a
    :class:`TargetCache`, not with ``layerwise``) keeps the base's reference outputs across
    epochs and plugins.
    """

    def __init__(
        self,
        base: Transformer,
        plugin: Plugin,
        kl_weight: float = 0.0,
        layerwise: bool = False,
        temperature: float = 1.0,
        cache: TargetCache | None = None,
    ) -> None:
        super().__init__()
        if cache is not None and layerwise:
            raise ConfigError(
                "a target cache holds final hidden states only: use layerwise=False with a "
                "cache, or no cache with layerwise=True"
            )
        self.plugin = plugin
        self._base = (base,)  # a tuple: not a submodule, so not trained, saved or put in train mode
        self.kl_weight = kl_weight
        self.layerwise = layerwise
        self.temperature = temperature
        self.cache = cache

    @property
    def base(self) -> Transformer:
        return self._base[0]

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device = next(self.base.parameters()).device
        inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
        mask = inputs.get("attention_mask")
        if self.cache is not None:
            hidden, logits = self.cache.reference(self.base, inputs)
            ref = _Reference(hidden, logits)
        else:
            with torch.no_grad():
                ref = self.base(**inputs, output_hidden_states=self.layerwise)
        out = self.base(**inputs, plan=self.plugin.plan(), output_hidden_states=self.layerwise)
        if self.layerwise:
            pairs = list(zip(out.hidden_states[1:], ref.hidden_states[1:]))
            mse = sum(hidden_mse(s, t, mask) for s, t in pairs) / len(pairs)
        else:
            mse = hidden_mse(out.last_hidden_state, ref.last_hidden_state, mask)
        loss, extras = mse, {"mse": mse.detach()}
        if self.kl_weight and out.logits is not None:
            kind = self.base.config.head.kind
            if kind == "regression":
                kd = regression_mse(out.logits, ref.logits)
            elif kind == "token_classification":
                kd = kd_kl(out.logits, ref.logits, self.temperature, mask=mask)
            else:
                kd = kd_kl(out.logits, ref.logits, self.temperature)
            loss = loss + self.kl_weight * kd
            extras["kl"] = kd.detach()
        return loss, extras


@dataclass
class _Reference:
    last_hidden_state: torch.Tensor
    logits: torch.Tensor | None


@dataclass
class PluginTrainResult:
    """Where the plugin was saved, and how training went."""

    plugin_dir: Path
    best_dir: Path | None
    steps: int
    seconds: float
    final_loss: float | None
    history: list[dict[str, Any]]


def train_plugin(
    base: Transformer,
    plugin: Plugin,
    features: Sequence[Mapping[str, Any]],
    collate_fn: Callable | None,
    config: TrainConfig,
    *,
    kl_weight: float = 0.0,
    layerwise: bool = False,
    eval_fn: Callable[[Plugin], Mapping[str, float]] | None = None,
    resume: bool = False,
    extra: dict[str, Any] | None = None,
    cache: TargetCache | None = None,
) -> PluginTrainResult:
    """Train ``plugin`` on ``base`` (frozen) to reproduce the base's own outputs.

    ``features``: tokenized inputs (labels, if any, are ignored). ``eval_fn(plugin)`` (optional)
    scores the plugin, e.g. on the dev set; with ``config.metric_for_best`` the best plugin
    goes to ``<output_dir>/best``. The final plugin is saved to ``<output_dir>/plugin``;
    ``extra`` is added to its gearshift.json. ``cache``: share one :class:`TargetCache`
    between plugins trained on the same base and data to run the base's reference pass once
    per example. Returns a :class:`PluginTrainResult`.
    """
    if not any(True for _ in plugin.parameters()):
        raise ConfigError(
            f"plugin {plugin.config.name} has no parameters to train (merge='mean', bottleneck=0)"
        )
    base.eval()
    base.requires_grad_(False)
    module = PluginDistillation(base, plugin, kl_weight=kl_weight, layerwise=layerwise, cache=cache)
    meta = dict(extra or {})
    meta["training"] = {"kl_weight": kl_weight, "layerwise": layerwise, **meta.get("training", {})}

    def save(m: nn.Module, folder: Path) -> None:
        write_plugin_files(m.plugin, folder, meta)

    trainer = Trainer(
        module,
        list(features),
        config,
        loss_fn=lambda m, batch: m(batch),
        eval_fn=(lambda m: eval_fn(m.plugin)) if eval_fn is not None else None,
        save_model_fn=save,
        collate_fn=collate_fn,
    )
    base.to(trainer.accelerator.device)
    start = time.perf_counter()
    result = trainer.fit(resume=resume)
    seconds = time.perf_counter() - start
    plugin.eval()
    meta["training"]["steps"] = result.global_step
    out = save_plugin(plugin, Path(config.output_dir) / PLUGIN_DIR, meta)
    losses = [r["loss"] for r in result.history if r.get("kind") == "train"]
    return PluginTrainResult(
        plugin_dir=out,
        best_dir=Path(result.best_model_dir) if result.best_model_dir else None,
        steps=result.global_step,
        seconds=seconds,
        final_loss=losses[-1] if losses else None,
        history=result.history,
    )


# ---------------------------------------------------------------------- the demo stage
def demo_stage(ctx: Any) -> list[dict]:
    """``jobs.DEMO_STAGES`` entry: train a k=4 "ffn" plugin on the demo's teacher (stage C,
    a small budget: well under 2 minutes on 2 cores) and return its operating-point row,
    latency measured against the teacher in the same run."""
    from gearshift.data.taskdata import TaskData, dev_texts

    from .config import PluginConfig
    from .operating_points import Candidate, measure_candidates

    steps = 60 if ctx.quick else 300
    train = TaskData.load(ctx.task, ctx.tokenizer, "train", limit=steps * 16)
    plugin = Plugin(PluginConfig(k=4, placement="ffn"), ctx.teacher)
    out_dir = Path(ctx.output_dir) / "plugins" / plugin.config.name
    cfg = TrainConfig(
        output_dir=str(out_dir),
        max_steps=steps,
        batch_size=16,
        learning_rate=1e-3,
        warmup_ratio=0.06,
        save_every=0,
        log_every=10,
        seed=42,
    )
    res = train_plugin(
        ctx.teacher,
        plugin,
        train.features,
        train.collator,
        cfg,
        resume=ctx.resume,
        extra={"task": ctx.task.name, "training": {"stage": "C"}},
    )
    took = f"in {res.seconds:.0f} s" if res.seconds >= 1 else "(trained earlier; --fresh retrains)"
    print(f"[demo] plugin {plugin.config.name}: {res.steps} steps {took} -> {res.plugin_dir}")
    candidates = [
        Candidate("full", "teacher", None),
        Candidate(
            plugin.config.name,
            "plugin",
            plugin.plan(),
            plugin.num_parameters(),
            {"plugin_dir": str(res.plugin_dir), "train_steps": res.steps},
        ),
    ]
    rows = measure_candidates(
        ctx.teacher,
        ctx.tokenizer,
        ctx.task,
        ctx.dev,
        candidates,
        dev_texts(ctx.task, 256),
        model_name=ctx.model_name,
        command="gearshift demo (stage plugins)",
        threads=ctx.threads,
        repeats=10 if ctx.quick else 30,
        progress=False,
    )
    return rows[1:]
