"""COST-EFF's pipeline: teacher -> multi-exit teaching assistant -> iterative joint pruning
with the assistant as teacher -> recovery distillation. Every stage trains on the project's
Trainer (resume, progress, atomic checkpoints) and saves a multi-exit model folder.

Loss of a student exit l against its target (:class:`ExitDistillation`):
``KD(student exit l, target l)`` (KL at temperature T; MSE for regression), averaged over
exits, ``+ hidden_weight * mean_l MSE(student h_l, target h_l)``, ``+ ce_weight *`` the
task loss on the labels (0 by default: the paper distils). Targets: for the assistant, the
teacher's final logits at every exit and the teacher's layer outputs; for joint pruning and
recovery, the assistant's exit l and layer l. ``exits=False`` trains the last exit only
(the static-pruning baseline); ``gradient_equilibrium`` rescales the exits' gradients.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gearshift.measure.flops import model_inputs
from gearshift.runtime.model import Transformer
from gearshift.train import TrainConfig, Trainer, hidden_mse, kd_kl, regression_mse

from .config import IMPORTANCE, SlimConfig  # noqa: F401  (SlimConfig: older imports)
from .model import (
    ExitConfig,
    MultiExitModel,
    equilibrium_plan,
    gradient_equilibrium,
    load_multi_exit,
    save_multi_exit,
)
from .prune import (
    Widths,
    current_widths,
    factorize_word_embedding,
    prune,
    schedule,
    select,
    taylor_importance,
)

logger = logging.getLogger("gearshift.slim")


# ---------------------------------------------------------------------- the loss
class ExitDistillation(nn.Module):
    """The module the Trainer trains: the student and its loss against a frozen target."""

    def __init__(
        self,
        student: MultiExitModel,
        target: MultiExitModel | Transformer,
        config: SlimConfig,
        exits: bool | None = None,
        train_backbone: bool = True,
    ) -> None:
        super().__init__()
        self.student = student
        self._target = (target.eval().requires_grad_(False),)
        self.config = config
        self.exits = config.exits if exits is None else exits
        self.train_backbone = train_backbone
        L = student.num_exits
        self.exit_scales, _ = gradient_equilibrium(L)
        self.plan = equilibrium_plan(L) if config.gradient_equilibrium else None
        if not train_backbone:
            student.base.requires_grad_(False)

    @property
    def target(self):
        return self._target[0]

    def train(self, mode: bool = True) -> ExitDistillation:
        super().train(mode)
        self.target.eval()
        if not self.train_backbone:
            self.student.base.eval()
        return self

    @torch.no_grad()
    def targets(self, inputs: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per exit: the target logits and the target hidden state."""
        t = self.target
        if isinstance(t, MultiExitModel):
            out = t.forward_all(**inputs)
            return out.exit_logits, out.hidden_states
        out = t(**inputs, output_hidden_states=True)
        L = len(out.hidden_states) - 1
        return [out.logits] * L, list(out.hidden_states[1:])

    def loss(self, batch: dict, last_only: bool = False) -> tuple[torch.Tensor, dict]:
        device = next(self.student.parameters()).device
        inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
        mask = inputs.get("attention_mask")
        t_logits, t_hidden = self.targets(inputs)
        ge = self.config.gradient_equilibrium and self.exits and not last_only
        s = self.student.forward_all(
            **inputs,
            plan=self.plan if ge else None,
            exit_grad_scales=self.exit_scales if ge else None,
        )
        L = self.student.num_exits
        layers = [L - 1] if (last_only or not self.exits) else list(range(L))
        regression = self.student.config.head.kind == "regression"
        kd_terms = []
        for layer in layers:
            if regression:
                kd_terms.append(regression_mse(s.exit_logits[layer], t_logits[layer]))
            else:
                kd_terms.append(
                    kd_kl(s.exit_logits[layer], t_logits[layer], self.config.temperature)
                )
        kd = sum(kd_terms) / len(kd_terms)
        loss, extras = kd, {"kd": kd.detach()}
        if self.config.hidden_weight and self.train_backbone:
            hid = sum(hidden_mse(s.hidden_states[i], t_hidden[i], mask) for i in range(L)) / L
            loss = loss + self.config.hidden_weight * hid
            extras["hidden"] = hid.detach()
        if self.config.ce_weight and "labels" in batch:
            labels = batch["labels"].to(device)
            ce = sum(self.student.base.task_loss(s.exit_logits[i], labels) for i in layers) / len(
                layers
            )
            loss = loss + self.config.ce_weight * ce
            extras["ce"] = ce.detach()
        return loss, extras

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        return self.loss(batch)


# ---------------------------------------------------------------------- stages
@dataclass
class StageResult:
    name: str
    model_dir: Path
    steps: int
    seconds: float
    widths: str


def _trainer_config(
    config: SlimConfig, output_dir: Path, steps: int, progress: bool
) -> TrainConfig:
    return TrainConfig(
        output_dir=str(output_dir),
        max_steps=steps,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_ratio=0.06,
        save_every=100,
        seed=config.seed,
        progress=progress,
        log_every=20,
        keep_optimizer=config.keep_optimizer,
    )


def distil_stage(
    student: MultiExitModel,
    target: MultiExitModel | Transformer,
    features: Sequence[dict],
    collate: Callable,
    config: SlimConfig,
    output_dir: Path,
    steps: int,
    *,
    tokenizer: Any = None,
    meta: dict | None = None,
    train_backbone: bool = True,
    exits: bool | None = None,
    progress: bool = True,
) -> Path:
    """Distil ``student`` from ``target`` for ``steps`` steps (resuming in ``output_dir``);
    the student is saved to ``<output_dir>/model`` and that folder returned."""
    module = ExitDistillation(student, target, config, exits=exits, train_backbone=train_backbone)
    exit_params = [p for p in student.exits.parameters()]
    backbone = [p for p in student.base.parameters() if p.requires_grad] if train_backbone else []
    groups = [{"params": exit_params, "lr": config.exit_learning_rate}]
    if backbone:
        groups.append({"params": backbone, "lr": config.learning_rate})
    trainer = Trainer(
        module,
        list(features),
        _trainer_config(config, output_dir, steps, progress),
        loss_fn=lambda m, batch: m(batch),
        save_model_fn=lambda m, path: save_multi_exit(m.student, path, tokenizer, meta),
        collate_fn=collate,
        trainable_params=groups,
    )
    target.to(trainer.accelerator.device)
    trainer.fit(resume=True)
    return save_multi_exit(student.eval(), output_dir / "model", tokenizer, meta)


def stage_done(output_dir: Path) -> bool:
    from gearshift.train.finetune import training_finished

    return (output_dir / "model" / "gearshift.json").is_file() and training_finished(output_dir)


def calibration_loss(config: SlimConfig, target: MultiExitModel) -> Callable:
    """Taylor scores' loss: all exits against the assistant's (joint), or the last only."""

    def loss_fn(model: MultiExitModel, batch: dict) -> torch.Tensor:
        module = ExitDistillation(model, target, config, exits=True)
        return module.loss(batch, last_only=config.importance == "last-exit")[0]

    return loss_fn


def run_slim(
    teacher: Transformer,
    features: Sequence[dict],
    collate: Callable,
    config: SlimConfig,
    output_dir: str | Path,
    tokenizer: Any = None,
    meta: dict | None = None,
    progress: bool = True,
    assistant_dir: str | Path | None = None,
) -> list[StageResult]:
    """The whole pipeline; finished stages are loaded, not redone (resume by re-running).
    ``assistant_dir``: a finished assistant (another run's ``ta/model``) to start from, so
    several target widths share one assistant."""
    config.validate()
    out = Path(output_dir)
    meta = dict(meta or {})
    meta["slim"] = asdict(config)
    results: list[StageResult] = []
    exit_cfg = ExitConfig(config.exit_pooler, config.exit_dropout, config.exit_pool)

    def run(name: str, student, target, steps: int, widths: Widths, **kw) -> MultiExitModel:
        stage_dir = out / name
        start = time.perf_counter()
        if stage_done(stage_dir):
            logger.info("slim: stage %s already done, loading it", name)
        else:
            stage_meta = meta | {"stage": name, "widths": widths.describe()}
            distil_stage(
                student,
                target,
                features,
                collate,
                config,
                stage_dir,
                steps,
                tokenizer=tokenizer,
                meta=stage_meta,
                progress=progress,
                **kw,
            )
        model = load_multi_exit(stage_dir / "model")
        results.append(
            StageResult(
                name, stage_dir / "model", steps, time.perf_counter() - start, widths.describe()
            )
        )
        return model

    # 1. the teaching assistant: full size, an exit after every layer, from the teacher
    torch.manual_seed(config.seed)
    ta = MultiExitModel(copy.deepcopy(teacher), exit_cfg)
    if config.exits and assistant_dir is not None:
        ta = load_multi_exit(assistant_dir)
        results.append(StageResult("ta", Path(assistant_dir), 0, 0.0, "shared assistant"))
    elif config.exits:
        ta = run("ta", ta, teacher, config.ta_steps, current_widths(teacher.config))
    # (static pruning, exits=False: the teacher itself is the target; its exits stay unused)
    # 2. iterative joint pruning with the assistant as teacher (a frozen copy of it)
    student, ta = ta, copy.deepcopy(ta).eval().requires_grad_(False)
    target_widths = config.target(teacher.config)
    plan = schedule(
        current_widths(teacher.config), target_widths, teacher.config.num_layers, config.iterations
    )
    calib = [
        collate(list(features[i : i + config.batch_size]))
        for i in range(
            0, min(len(features), config.calibration_batches * config.batch_size), config.batch_size
        )
    ]
    for i, widths in enumerate(plan, 1):
        name = f"prune-{i}"
        pruned_dir = out / name / "pruned"
        if stage_done(out / name):
            student = run(name, student, ta, config.steps_per_iteration, widths)
            continue
        if (pruned_dir / "gearshift.json").is_file():
            student = load_multi_exit(pruned_dir)
        else:
            scores = taylor_importance(student, calib, calibration_loss(config, ta))
            heads, ffn = widths.per_layer(teacher.config.num_layers)
            keep_h = select(scores.heads, heads, config.global_ranking)
            keep_f = select(scores.neurons, ffn, config.global_ranking)
            base = prune(student.base, keep_h, keep_f)
            if widths.word_rank and base.config.word_rank != widths.word_rank:
                base = factorize_word_embedding(base, widths.word_rank)
            new = MultiExitModel(base, exit_cfg)
            new.exits.load_state_dict(student.exits.state_dict())
            student = new
            save_multi_exit(
                student,
                pruned_dir,
                tokenizer,
                meta | {"stage": name, "kept_heads": keep_h, "kept_neurons": keep_f},
            )
        student = run(name, student, ta, config.steps_per_iteration, widths)
    # 3. recovery distillation
    final = run("recover", student, ta, config.recovery_steps, target_widths)
    (out / "stages.json").write_text(
        json.dumps([asdict(r) | {"model_dir": str(r.model_dir)} for r in results], indent=2)
    )
    del final
    return results
