"""gearshift's own transformer: one class for encoders and decoders of every family.

The forward pass is the loop of :mod:`gearshift.runtime.plan`: embeddings, then a list of
steps through parameter blocks (with the attach points a method fills in), then an optional
final LayerNorm and task head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gearshift.runtime.config import ModelConfig
from gearshift.runtime.edits import build_forms
from gearshift.runtime.forms import word_logits
from gearshift.runtime.modules import AttentionMask, Block, Embeddings, Head, LayerNorms
from gearshift.runtime.plan import ForwardPlan, Step, default_steps


@dataclass
class TransformerOutput:
    """What a forward pass returns.

    ``last_hidden_state``: (B, n, d); with early exit, each row's state at its exit step.
    ``hidden_states``: embedding output then the output of every step (if asked for).
    ``exit_step``: (B,) index of the step each row left after (early exit), else None.
    ``past_key_values``: one (k, v) per step, for decoding with a cache.
    """

    last_hidden_state: torch.Tensor
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    exit_step: torch.Tensor | None = None
    past_key_values: list | None = None


class Transformer(nn.Module):
    """Embeddings -> steps through (possibly shared, possibly pruned) blocks -> head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.blocks = nn.ModuleList(Block(config, shape) for shape in config.blocks)
        self.norms = (
            nn.ModuleList(LayerNorms(config) for _ in range(config.num_layers))
            if config.layer_norms
            else None
        )
        self.final_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            if config.final_norm
            else None
        )
        self.head = (
            Head(config)
            if config.head.kind in ("classification", "regression", "token_classification")
            else None
        )
        self.lm_head = None
        if config.head.kind == "lm" and not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._default_steps = default_steps(config.layer_to_block)
        build_forms(self)  # model edits the config records: low-rank, decoded, int8 modules

    # ------------------------------------------------------------------ helpers
    @property
    def steps(self) -> list[Step]:
        """The default layer loop: one step of size 1 per layer."""
        return self._default_steps

    def set_head(
        self, kind: str | None, num_labels: int = 0, label_names: list[str] | None = None
    ) -> None:
        """Replace the task head (fresh weights) for ``kind`` with ``num_labels`` outputs."""
        hc = self.config.head
        hc.kind, hc.num_labels, hc.label_names = kind, num_labels, label_names
        self.config.validate()
        self.head = (
            Head(self.config)
            if kind in ("classification", "regression", "token_classification")
            else None
        )

    def lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Next-token logits from hidden states (tied to the word embedding unless untied)."""
        if self.lm_head is not None:
            return self.lm_head(h)
        return word_logits(self.embeddings.word, h)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        plan: ForwardPlan | None = None,
        output_hidden_states: bool = False,
        past_key_values: list | None = None,
        use_cache: bool = False,
    ) -> TransformerOutput:
        """Run the model; ``plan`` (optional) attaches a method's changes for this call only."""
        cfg = self.config
        plan = plan or _NO_PLAN
        steps = plan.steps if plan.steps is not None else self._default_steps
        past = 0 if not past_key_values else past_key_values[0][0].shape[2]
        if past and attention_mask is not None and attention_mask.shape[1] == input_ids.shape[1]:
            raise ValueError("with past_key_values, attention_mask must cover past and new tokens")

        h = self.embeddings(input_ids, token_type_ids, position_ids, past)
        mask = AttentionMask.from_attention_mask(attention_mask, cfg.causal, past)
        hidden_states = [h] if output_hidden_states else None
        new_cache = [] if use_cache else None

        # Early exit bookkeeping: `rows` are the original batch rows still running.
        B = h.shape[0]
        rows = None
        final_h = exit_step = None
        if plan.exit is not None:
            final_h = torch.empty_like(h)
            exit_step = torch.full((B,), len(steps) - 1, dtype=torch.long, device=h.device)
            rows = torch.arange(B, device=h.device)

        for i, step in enumerate(steps):
            block = self.blocks[step.block]
            norms = self.norms[step.start_layer] if self.norms is not None else None
            cache = past_key_values[i] if past_key_values else None
            # wraps key on the layer whose block runs: the step's start (Euler's f(h_t))
            ffn_wrap = plan.ffn_wrap.get(step.start_layer)
            kv_out = []

            def block_fn(
                x, m=mask, block=block, cache=cache, ffn_wrap=ffn_wrap, kv_out=kv_out, norms=norms
            ):
                y, kv = block(x, m, ffn_wrap, cache, norms)
                kv_out.append(kv)
                return y

            wrap = plan.block_wrap.get(step.start_layer)
            if wrap is not None:  # the wrap may change the sequence (and so the mask) it runs on

                def block_fn(x, inner=block_fn, wrap=wrap, m=mask):
                    return wrap(inner, x, m)

            h = plan.update(block_fn, h, step)
            if new_cache is not None:
                new_cache.append(kv_out[-1])
            if hidden_states is not None:
                hidden_states.append(h)

            if plan.exit is not None and i < len(steps) - 1:
                leave = plan.exit(step.layer, h, mask, rows)
                if leave is not None and bool(leave.any()):
                    final_h[rows[leave]] = h[leave]
                    exit_step[rows[leave]] = i
                    stay = (~leave).nonzero().squeeze(1)
                    rows, h, mask = rows[stay], h[stay], mask.select(stay)
                    if rows.numel() == 0:
                        break
        if final_h is not None:
            if rows.numel():
                final_h[rows] = h
            h = final_h
        if self.final_norm is not None:
            h = self.final_norm(h)
            if hidden_states is not None:
                hidden_states[-1] = h

        keep = attention_mask.bool() if attention_mask is not None else None
        logits = loss = None
        if not plan.run_head:
            pass
        elif self.head is not None:
            logits = self.head(h, keep)
            if labels is not None:
                loss = self.task_loss(logits, labels)
        elif cfg.head.kind == "lm":
            logits = self.lm_logits(h)
            if labels is not None:
                loss = F.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]),
                    labels[:, 1:].reshape(-1),
                    ignore_index=-100,
                )
        return TransformerOutput(
            last_hidden_state=h,
            logits=logits,
            loss=loss,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            exit_step=exit_step,
            past_key_values=new_cache,
        )

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The head's training loss: cross-entropy (classification, tokens) or MSE (regression)."""
        kind = self.config.head.kind
        if kind == "regression":
            return F.mse_loss(logits.float(), labels.float())
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
        )


_NO_PLAN = ForwardPlan()
