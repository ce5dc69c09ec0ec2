"""Multi-exit models: an exit after every layer, batched early exit, and the exits' folder.

:class:`MultiExitModel` wraps a :class:`~gearshift.runtime.Transformer` with a task head.
Layers ``0 .. L-2`` get an :class:`ExitHead` (as in COST-EFF and DeeBERT: ``tanh`` of the
first token's state -> dropout -> linear; ``pooler="dense"`` puts a BERT-pooler-like dense
layer first); the last layer's exit is the model's own head, so a fine-tuned teacher keeps
its full-depth output.

- ``forward_all(batch)``: every exit's logits (training, and recording a dev set once for
  threshold sweeps), plus the hidden states.
- ``forward(...)``: a normal model call (``evaluate``/``predict`` work on it). With an exit
  criterion active (:meth:`use_criterion` / ``with model.criterion(...)``, per thread, like
  plugins), rows whose exit is confident leave the batch and the rest continue; logits are
  the exit's, ``exit_step`` says where each row left. Rows that left never run the head.

Folder: ``gearshift.json`` with ``kind: "multi-exit-model"`` (the model config and the
exits' config) + ``model.safetensors`` (the model's tensors and ``exits.<l>.*``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from gearshift.constants import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME
from gearshift.errors import ArtifactError, ConfigError
from gearshift.runtime.config import ModelConfig
from gearshift.runtime.io import folder_kind, read_meta, read_weights, write_folder_atomically
from gearshift.runtime.model import Transformer, TransformerOutput
from gearshift.runtime.modules import AttentionMask
from gearshift.runtime.plan import ForwardPlan
from gearshift.runtime.setting import ThreadSetting

from .criteria import Criterion

KIND = "multi-exit-model"
POOLERS = ("tanh", "dense")
POOLS = ("first", "mean")


@dataclass
class ExitConfig:
    """The exits' shape: ``pooler`` "tanh" (the paper) or "dense" (Linear + tanh first);
    ``pool``: the vector an exit reads, "first" (the first token's state, the paper) or
    "mean" (the mean of the real tokens' states). Mean pooling exists because a model
    pre-trained with mean pooling (all-MiniLM-L6-v2) carries nothing in its shallow layers'
    first token: see docs/slim.md."""

    pooler: str = "tanh"
    dropout: float = 0.1
    pool: str = "first"

    def validate(self) -> None:
        if self.pooler not in POOLERS:
            raise ConfigError(f"exit pooler {self.pooler!r} unknown: use one of {POOLERS}")
        if self.pool not in POOLS:
            raise ConfigError(f"exit pool {self.pool!r} unknown: use one of {POOLS}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"exit dropout {self.dropout} must be in [0, 1)")


def mean_of_real_tokens(h: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """(B, n, d) -> (B, d): the mean over the real tokens (``keep``: (B, n) bool, True =
    real; None = all real)."""
    if keep is None:
        return h.mean(dim=1)
    w = keep.to(h.dtype).unsqueeze(-1)
    return (h * w).sum(dim=1) / w.sum(dim=1).clamp(min=1.0)


class ExitHead(nn.Module):
    """``linear(dropout(tanh(pool(h))))`` (or with a dense layer before the tanh), where
    ``pool`` takes the first token or the mean of the real tokens (``keep``: (B, n) bool,
    True = real; None = all real); (B, C) logits, or (B,) predictions for regression (the
    model head's shapes)."""

    def __init__(self, hidden_size: int, outputs: int, config: ExitConfig) -> None:
        super().__init__()
        self.pool = config.pool
        self.dense = nn.Linear(hidden_size, hidden_size) if config.pooler == "dense" else None
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(hidden_size, outputs)

    def forward(self, h: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = h[:, 0] if self.pool == "first" else mean_of_real_tokens(h, keep)
        if self.dense is not None:
            x = self.dense(x)
        y = self.out(self.dropout(torch.tanh(x)))
        return y.squeeze(-1) if y.shape[-1] == 1 else y  # regression: (B,), like the head


@dataclass
class MultiExitOutput:
    """``exit_logits[l]``: (B, C) logits of layer l's exit (the last one is the model's head);
    ``hidden_states[l]``: the output of layer l (``hidden_states[-1]`` is the last layer's)."""

    exit_logits: list[torch.Tensor]
    hidden_states: list[torch.Tensor]
    embeddings: torch.Tensor


_UNSET = object()


class MultiExitModel(nn.Module):
    """A sequence classification/regression model with an exit after every layer."""

    def __init__(self, base: Transformer, config: ExitConfig | None = None) -> None:
        super().__init__()
        kind = base.config.head.kind
        if kind not in ("classification", "regression"):
            raise ConfigError(
                f"multi-exit models need a sequence classification or regression head, not "
                f"{kind!r}: load the model with the task's head first"
            )
        if base.config.is_shared:
            raise ConfigError("multi-exit models need unshared layers (one block per layer)")
        self.base = base
        self.exit_config = config or ExitConfig()
        self.exit_config.validate()
        outputs = 1 if kind == "regression" else base.config.head.num_labels
        d, L = base.config.hidden_size, base.config.num_layers
        self.exits = nn.ModuleList(ExitHead(d, outputs, self.exit_config) for _ in range(L - 1))
        self._criterion = ThreadSetting("exit_criterion", None)

    @property
    def config(self) -> ModelConfig:
        return self.base.config

    @property
    def num_exits(self) -> int:
        return self.base.config.num_layers

    def exit_of(self, layer: int, h: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Logits of layer ``layer``'s exit from that layer's output ``h``."""
        if layer == self.num_exits - 1:
            return self.base.head(h, keep)
        return self.exits[layer](h, keep)

    # ------------------------------------------------------------------ training view
    def forward_all(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        plan: ForwardPlan | None = None,
        exit_grad_scales: list[float] | None = None,
    ) -> MultiExitOutput:
        """Run every layer and every exit. ``exit_grad_scales[l]`` (optional) scales the
        gradient that exit l's loss sends into the backbone (gradient equilibrium)."""
        plan = plan or ForwardPlan()
        out = self.base(
            input_ids,
            attention_mask,
            token_type_ids,
            plan=ForwardPlan(
                steps=plan.steps,
                update=plan.update,
                ffn_wrap=plan.ffn_wrap,
                block_wrap=plan.block_wrap,
                run_head=False,
            ),
            output_hidden_states=True,
        )
        keep = attention_mask.bool() if attention_mask is not None else None
        hidden = list(out.hidden_states[1:])
        logits = []
        for layer, h in enumerate(hidden):
            if exit_grad_scales is not None:
                h = scale_grad(h, exit_grad_scales[layer])
            logits.append(self.exit_of(layer, h, keep))
        return MultiExitOutput(logits, hidden, out.hidden_states[0])

    # ------------------------------------------------------------------ inference view
    @property
    def active_criterion(self) -> Criterion | None:
        return self._criterion.get()

    def use_criterion(self, criterion: Criterion | None) -> None:
        """Exit early by ``criterion`` (None: always run every layer) in this thread/context."""
        self._criterion.set(criterion)

    @contextmanager
    def criterion(self, criterion: Criterion | None) -> Iterator[MultiExitModel]:
        with self._criterion.using(criterion):
            yield self

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        plan: ForwardPlan | None = None,
        criterion: Any = _UNSET,
        **kwargs: Any,
    ) -> TransformerOutput:
        """A model call: full depth, or early exit under the active (or given) criterion."""
        crit = self.active_criterion if criterion is _UNSET else criterion
        if crit is None:
            out = self.base(
                input_ids, attention_mask, token_type_ids, labels=labels, plan=plan, **kwargs
            )
            return out
        if plan is not None and (plan.exit is not None or plan.steps is not None):
            raise ConfigError("early exit builds its own exit plan: pass no plan with exits")
        B = input_ids.shape[0]
        L = self.num_exits
        state = crit.start(B, input_ids.device)
        logits_out: list[torch.Tensor | None] = [None]
        keep_all = attention_mask.bool() if attention_mask is not None else None

        def exit_fn(layer: int, h: torch.Tensor, mask: AttentionMask, rows: torch.Tensor):
            logits = self.exits[layer](h, mask.keep)
            if logits_out[0] is None:
                logits_out[0] = logits.new_zeros((B, *logits.shape[1:]))
            leave = crit.decide(layer, logits, rows, state)
            if bool(leave.any()):
                logits_out[0][rows[leave]] = logits[leave]
            return leave

        base_plan = plan or ForwardPlan()
        out = self.base(
            input_ids,
            attention_mask,
            token_type_ids,
            plan=ForwardPlan(
                ffn_wrap=base_plan.ffn_wrap,
                block_wrap=base_plan.block_wrap,
                exit=exit_fn,
                run_head=False,
            ),
            **kwargs,
        )
        stayed = (out.exit_step == L - 1).nonzero().squeeze(1)
        h = out.last_hidden_state
        if stayed.numel():
            keep = keep_all[stayed] if keep_all is not None else None
            final = self.base.head(h[stayed], keep)
            if logits_out[0] is None:
                logits_out[0] = final.new_zeros((B, *final.shape[1:]))
            logits_out[0][stayed] = final
        logits = logits_out[0]
        loss = self.base.task_loss(logits, labels) if labels is not None else None
        return TransformerOutput(
            last_hidden_state=h, logits=logits, loss=loss, exit_step=out.exit_step
        )

    # ------------------------------------------------------------------ saving
    def save_pretrained(
        self, folder: str | os.PathLike, tokenizer: Any = None, extra: dict | None = None
    ) -> Path:
        return save_multi_exit(self, folder, tokenizer, extra)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by ``scale`` on the way back."""
    return x if scale == 1.0 else _ScaleGrad.apply(x, scale)


def gradient_equilibrium(num_layers: int) -> tuple[list[float], dict[int, float]]:
    """Gradient equilibrium (Li et al., ICCV 2019) for exits after every layer: where layer
    l's output splits into its exit and layer l+1, the exit's gradient is scaled by
    ``1 / (L - l)`` and the deeper path's by ``(L - l - 1) / (L - l)``, so no layer's
    gradient grows with the number of exits above it. Returns (exit scales, {layer: scale
    of the gradient entering layer ``layer`` from its input})."""
    L = num_layers
    exit_scales = [1.0 / (L - l) for l in range(L)]  # noqa: E741
    path_scales = {l + 1: (L - l - 1) / (L - l) for l in range(L - 1)}  # noqa: E741
    return exit_scales, path_scales


def equilibrium_plan(num_layers: int) -> ForwardPlan:
    """A plan whose layer wraps scale the gradient each layer sends back to the one below."""
    _, path = gradient_equilibrium(num_layers)

    def wrap_for(scale: float):
        def wrap(block_fn, h, mask):
            return block_fn(scale_grad(h, scale), mask)

        return wrap

    return ForwardPlan(block_wrap={layer: wrap_for(s) for layer, s in path.items()})


# ---------------------------------------------------------------------- folders
def save_multi_exit(
    model: MultiExitModel,
    folder: str | os.PathLike,
    tokenizer: Any = None,
    extra: dict | None = None,
) -> Path:
    """Save as a gearshift folder of kind "multi-exit-model" (atomically)."""

    def write(tmp: Path) -> None:
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "config": model.base.config.to_dict(),
            "exits": asdict(model.exit_config),
            **(extra or {}),
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        state = {f"base.{k}": v for k, v in model.base.state_dict().items()}
        state |= {f"exits.{k}": v for k, v in model.exits.state_dict().items()}
        state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))

    return write_folder_atomically(folder, write)


def load_multi_exit(folder: str | os.PathLike) -> MultiExitModel:
    """Load a folder written by :func:`save_multi_exit`; outputs equal the saved model's."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta.get("kind") != KIND:
        raise ArtifactError(
            f"{folder / CONFIG_NAME} has kind {meta.get('kind')!r}, not {KIND!r}: load a plain "
            "model with gearshift.runtime.load_pretrained and wrap it in MultiExitModel"
        )
    base = Transformer(ModelConfig.from_dict(meta["config"]))
    model = MultiExitModel(base, ExitConfig(**meta.get("exits", {})))
    model.load_state_dict(read_weights(folder, model.state_dict()))
    return model.eval()


def is_multi_exit_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a model saved by :func:`save_multi_exit`."""
    return folder_kind(folder) == KIND
