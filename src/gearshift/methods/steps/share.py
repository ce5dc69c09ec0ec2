"""Making parameter-shared models from unshared ones, and training them to tolerate steps.

- :func:`make_shared`: one block for every G consecutive layers (G groups), each shared
  block initialised from its layers: their element-wise ``mean``, or one chosen layer
  (``first``, ``middle``, ``last``). Embeddings, final norm and head are copied.
- :class:`ShareDistillation`: the student (shared) learns the teacher's (unshared) hidden
  states on raw text: MSE of the final states, optionally also at every integer time a
  student step lands on (``layerwise``). With ``step_sizes`` (step-aware training) each
  batch draws one step size a from the set and the student runs ``round(L_g / a)`` steps
  per group; with ``(1,)`` it is the naive reading (train at a = 1 only).
- :func:`distil_shared`: the above on the project's Trainer (resume, progress, atomic
  checkpoints); the result is an ordinary gearshift model folder.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gearshift.errors import ConfigError
from gearshift.measure.flops import model_inputs
from gearshift.runtime.config import ModelConfig
from gearshift.runtime.io import save_model
from gearshift.runtime.model import Transformer
from gearshift.train import TrainConfig, Trainer, hidden_mse

from .model import make_steps, shared_groups

INITS = ("mean", "first", "middle", "last")


def group_layers(num_layers: int, groups: int) -> list[int]:
    """``layer_to_block`` for ``groups`` groups of consecutive layers (sizes differ by <= 1)."""
    if not isinstance(groups, int) or not 1 <= groups <= num_layers:
        raise ConfigError(
            f"groups={groups!r}: a {num_layers}-layer model can share in 1 to {num_layers} groups"
        )
    return [layer * groups // num_layers for layer in range(num_layers)]


def make_shared(
    model: Transformer,
    groups: int = 1,
    init: str = "mean",
    layer_to_block: list[int] | None = None,
    layer_norms: bool = False,
) -> Transformer:
    """A copy of ``model`` whose layers share ``groups`` blocks of consecutive layers.

    ``init``: ``mean`` (element-wise mean of the group's layers' parameters) or ``first`` /
    ``middle`` / ``last`` (that layer of the group). ``layer_to_block`` (optional) gives the
    grouping explicitly; it must name consecutive runs. The source must be unshared, with
    equal block widths inside each group. ``layer_norms``: every layer keeps its own two
    LayerNorms, copied exactly from the source (``ModelConfig.layer_norms``); only attention
    and FFN weights are shared.
    """
    cfg = model.config
    if init not in INITS:
        raise ConfigError(f"init {init!r} is unknown: use one of {', '.join(INITS)}")
    if cfg.is_shared:
        raise ConfigError(
            "the model already shares layers (layer_to_block "
            f"{cfg.layer_to_block}): make_shared starts from an unshared model"
        )
    mapping = (
        list(layer_to_block) if layer_to_block is not None else group_layers(cfg.num_layers, groups)
    )
    if len(mapping) != cfg.num_layers:
        raise ConfigError(f"layer_to_block has {len(mapping)} entries for {cfg.num_layers} layers")
    runs = shared_groups(mapping)
    if sorted(b for b, _, _ in runs) != list(range(len(runs))):
        raise ConfigError(
            f"layer_to_block {mapping} must number its groups 0, 1, ... in order, each a run of "
            "consecutive layers"
        )
    new_cfg = ModelConfig.from_dict(copy.deepcopy(cfg.to_dict()))
    blocks = []
    for _, first, n in runs:
        shapes = {astuple(cfg.layer_shape(i)) for i in range(first, first + n)}
        if len(shapes) != 1:
            raise ConfigError(
                f"layers {first}..{first + n - 1} have different widths (heads, FFN) "
                f"{sorted(shapes)}: they cannot share one block; group equal-width layers"
            )
        blocks.append(copy.deepcopy(cfg.layer_shape(first)))
    new_cfg.blocks = blocks
    new_cfg.layer_to_block = mapping
    new_cfg.layer_norms = bool(layer_norms or cfg.layer_norms)
    new_cfg.validate()
    shared = Transformer(new_cfg)
    own = model.state_dict()
    state = {k: v for k, v in own.items() if not k.startswith(("blocks.", "norms."))}
    if new_cfg.layer_norms:
        for i in range(cfg.num_layers):
            src = f"norms.{i}." if cfg.layer_norms else f"blocks.{cfg.layer_to_block[i]}."
            for name in ("attn_norm.weight", "attn_norm.bias", "ffn_norm.weight", "ffn_norm.bias"):
                state[f"norms.{i}.{name}"] = own[src + name]
    for b, first, n in runs:
        layers = list(range(first, first + n))
        pick = {
            "first": [layers[0]],
            "middle": [layers[(n - 1) // 2]],
            "last": [layers[-1]],
            "mean": layers,
        }[init]
        src_blocks = [cfg.layer_to_block[i] for i in pick]
        for name in shared.blocks[b].state_dict():
            tensors = [own[f"blocks.{s}.{name}"].float() for s in src_blocks]
            state[f"blocks.{b}.{name}"] = (sum(tensors) / len(tensors)).to(
                own[f"blocks.{src_blocks[0]}.{name}"].dtype
            )
    shared.load_state_dict(state)
    return shared.train(model.training)


def steps_for_size(config: ModelConfig, a: float) -> list:
    """The student's steps at (about) step size ``a``: ``max(1, round(L_g / a))`` per group."""
    n = sum(max(1, round(length / a)) for _, _, length in shared_groups(config.layer_to_block))
    return make_steps(config, n_steps=n)


def steps_for_group_sizes(config: ModelConfig, sizes: Sequence[float]) -> list:
    """The steps when each group of shared layers runs at its own step size: ``sizes[g]``
    gives group g ``max(1, round(L_g / sizes[g]))`` equal steps. Equal sizes give exactly
    :func:`steps_for_size`'s steps."""
    groups = shared_groups(config.layer_to_block)
    if len(sizes) != len(groups):
        raise ConfigError(f"{len(sizes)} step sizes for {len(groups)} groups of shared layers")
    if len(set(sizes)) == 1:
        return steps_for_size(config, float(sizes[0]))
    out: list[float] = []
    for (_, _, length), a in zip(groups, sizes):
        n = max(1, round(length / float(a)))
        out += [length / n] * n
    return make_steps(config, sizes=out)


def draw_group_sizes(
    config: ModelConfig, step_sizes: Sequence[float], per_group: bool = False
) -> tuple[float, ...]:
    """This batch's step size for each group of shared layers, drawn with torch's RNG (so an
    exact resume replays it) from ``step_sizes``: one draw for the whole model, or with
    ``per_group`` one per group, so that mixed plans (two groups of three layers at N = 3:
    steps of 1.5, 1.5 and 3) are trained too. With one group both are the same draw."""
    n_groups = len(shared_groups(config.layer_to_block))
    draws = n_groups if per_group else 1
    picks = [
        float(step_sizes[int(torch.randint(len(step_sizes), ()).item())]) for _ in range(draws)
    ]
    return tuple(picks) if per_group else tuple(picks * n_groups)


def logged_size(sizes: Sequence[float]) -> float:
    """The step size a training log records for per-group ``sizes``: the drawn size when
    every group has it, else their mean."""
    return sizes[0] if len(set(sizes)) == 1 else sum(sizes) / len(sizes)


class ShareDistillation(nn.Module):
    """The module the Trainer trains: the shared student and its loss against the teacher.

    ``forward(batch)`` draws a step size (step-aware) and returns ``(loss, {"mse", "a"})``.
    """

    def __init__(
        self,
        student: Transformer,
        teacher: Transformer,
        step_sizes: Sequence[float] = (1.0,),
        layerwise: bool = False,
        per_group: bool = False,
    ) -> None:
        super().__init__()
        if student.config.num_layers != teacher.config.num_layers:
            raise ConfigError(
                f"student has {student.config.num_layers} layers, teacher "
                f"{teacher.config.num_layers}: the shared model must cover the teacher's depth"
            )
        if not step_sizes or any(not float(a) > 0 for a in step_sizes):
            raise ConfigError(f"step sizes {list(step_sizes)} must be positive numbers")
        self.student = student
        self._teacher = (teacher.eval().requires_grad_(False),)  # not a submodule: not trained
        self.step_sizes = [float(a) for a in step_sizes]
        self.layerwise = layerwise
        self.per_group = per_group
        self._plans: dict[tuple[float, ...], list] = {}

    @property
    def teacher(self) -> Transformer:
        return self._teacher[0]

    def train(self, mode: bool = True) -> ShareDistillation:
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        from gearshift.runtime.plan import ForwardPlan

        device = next(self.student.parameters()).device
        inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
        mask = inputs.get("attention_mask")
        # drawn from torch's RNG, so the Trainer's RNG checkpoint replays it
        sizes = draw_group_sizes(self.student.config, self.step_sizes, self.per_group)
        if sizes not in self._plans:
            self._plans[sizes] = steps_for_group_sizes(self.student.config, sizes)
        steps = self._plans[sizes]
        a = logged_size(sizes)
        with torch.no_grad():
            ref = self.teacher(**inputs, output_hidden_states=self.layerwise)
        out = self.student(
            **inputs, plan=ForwardPlan(steps=steps), output_hidden_states=self.layerwise
        )
        loss = hidden_mse(out.last_hidden_state, ref.last_hidden_state, mask)
        if self.layerwise:  # every integer time a step lands on (the last one is counted above)
            t, terms = 0.0, []
            for i, step in enumerate(steps[:-1]):
                t += step.step_size
                if abs(t - round(t)) < 1e-6:
                    terms.append(
                        hidden_mse(out.hidden_states[i + 1], ref.hidden_states[round(t)], mask)
                    )
            if terms:
                loss = (loss + sum(terms)) / (1 + len(terms))
        return loss, {"mse": loss.detach(), "a": a}


def held_out_fidelity(
    eval_batches: Sequence[Mapping[str, Any]], step_sizes: Sequence[float] = (1.0, 2.0)
) -> Callable[[ShareDistillation], dict[str, float]]:
    """A Trainer ``eval_fn`` for :func:`distil_shared`: on held-out batches, the mean cosine
    of the student's final hidden states to the teacher's (real tokens) and the hidden-state
    MSE, at each step size in ``step_sizes`` (``cos_a1``, ``mse_a1``, ``cos_a2``, ...). Logged
    every ``eval_every`` steps, it shows what more distillation would buy. The teacher's
    states are computed once and kept."""
    from gearshift.runtime.plan import ForwardPlan

    sizes = [float(a) for a in step_sizes]
    cache: list[tuple[dict[str, torch.Tensor], torch.Tensor]] = []  # (inputs, teacher states)

    @torch.inference_mode()
    def eval_fn(module: ShareDistillation) -> dict[str, float]:
        student, teacher = module.student, module.teacher
        if not cache:
            device = next(student.parameters()).device
            for b in eval_batches:
                inputs = {k: v.to(device) for k, v in model_inputs(b).items()}
                cache.append((inputs, teacher(**inputs).last_hidden_state))
        out = {}
        for a in sizes:
            plan = ForwardPlan(steps=steps_for_size(student.config, a))
            cos_sum, mse_sum, count = 0.0, 0.0, 0
            for b, ref in cache:
                h = student(**b, plan=plan).last_hidden_state
                mask = b["attention_mask"].bool()
                cos_sum += float(torch.cosine_similarity(h[mask], ref[mask], dim=-1).sum())
                mse_sum += float(hidden_mse(h, ref, b["attention_mask"])) * int(mask.sum())
                count += int(mask.sum())
            key = f"a{a:g}".replace(".", "_")
            out[f"cos_{key}"] = cos_sum / max(count, 1)
            out[f"mse_{key}"] = mse_sum / max(count, 1)
        return out

    return eval_fn


@dataclass
class ShareResult:
    model_dir: Path
    steps: int
    seconds: float
    final_loss: float | None
    history: list[dict[str, Any]]


def distil_shared(
    student: Transformer,
    teacher: Transformer,
    features: Sequence[Mapping[str, Any]],
    collate_fn: Callable | None,
    config: TrainConfig,
    *,
    step_sizes: Sequence[float] = (1.0,),
    layerwise: bool = False,
    per_group: bool = False,
    tokenizer: Any = None,
    extra: dict[str, Any] | None = None,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    eval_batches: Sequence[Mapping[str, Any]] | None = None,
) -> ShareResult:
    """Distil ``teacher`` into the shared ``student`` on ``features`` (raw text); the final
    student is saved as a gearshift model folder at ``<output_dir>/model``. With
    ``eval_batches`` (held-out text), :func:`held_out_fidelity` at a = 1 and 2 is logged every
    ``config.eval_every`` steps (and at the end). ``per_group``: each group of shared layers
    draws its own step size per batch (:func:`draw_group_sizes`)."""
    module = ShareDistillation(student, teacher, step_sizes, layerwise, per_group)
    meta = {
        "shared": {
            "step_sizes": list(module.step_sizes),
            "per_group_steps": per_group,
            "layerwise": layerwise,
            **(extra or {}),
        }
    }

    def save(m: nn.Module, folder: Path) -> None:
        save_model(m.student, folder, tokenizer=tokenizer, extra=meta)

    trainer = Trainer(
        module,
        list(features),
        config,
        loss_fn=lambda m, batch: m(batch),
        save_model_fn=save,
        collate_fn=collate_fn,
        callbacks=callbacks,
        eval_fn=held_out_fidelity(eval_batches) if eval_batches else None,
    )
    teacher.to(trainer.accelerator.device)
    start = time.perf_counter()
    result = trainer.fit(resume=resume)
    seconds = time.perf_counter() - start
    meta["shared"]["train_steps"] = result.global_step
    out = save_model(
        student.eval(), Path(config.output_dir) / "model", tokenizer=tokenizer, extra=meta
    )
    losses = [r["loss"] for r in result.history if r.get("kind") == "train"]
    return ShareResult(
        out, result.global_step, seconds, losses[-1] if losses else None, result.history
    )
