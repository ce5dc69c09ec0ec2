"""Distillation losses shared by the methods.

All losses compute in float32 (whatever the inputs' dtype) and return a scalar tensor.
Logits have the class/vocabulary axis last; every other axis is a "row" (an example, or a
token when the logits are per token). ``mask`` (optional, broadcastable to the rows, 1 =
real, 0 = padding) restricts the mean to real rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gearshift.errors import ConfigError

__all__ = ["hidden_mse", "kd_kl", "regression_mse", "soft_ce"]


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not temperature > 0:
        raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
    return temperature


def _masked_row_mean(per_row: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``per_row`` over rows where mask is 1 (all rows when mask is None)."""
    if mask is None:
        return per_row.mean()
    m = mask.to(device=per_row.device, dtype=per_row.dtype).expand_as(per_row)
    return (per_row * m).sum() / m.sum().clamp_min(1.0)


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{what}: student shape {tuple(a.shape)} != teacher shape {tuple(b.shape)}"
        )


def kd_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton distillation loss: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, mean over rows.

    The ``T^2`` factor keeps gradient magnitudes comparable across temperatures. Equals
    ``T^2 * soft_ce(...)`` minus ``T^2`` times the teacher's entropy (a constant).
    """
    _check_same_shape(student_logits, teacher_logits, "kd_kl")
    t = _check_temperature(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    per_row = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return _masked_row_mean(per_row, mask) * (t * t)


def soft_ce(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft cross-entropy ``-sum softmax(t/T) * log_softmax(s/T)``, mean over rows.

    Not scaled by ``T^2`` (the TinyBERT convention); use :func:`kd_kl` for the scaled loss.
    """
    _check_same_shape(student_logits, teacher_logits, "soft_ce")
    t = _check_temperature(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    p_t = F.softmax(teacher_logits.detach().float() / t, dim=-1)
    per_row = -(p_t * log_p_s).sum(-1)
    return _masked_row_mean(per_row, mask)


def hidden_mse(
    student_h: torch.Tensor,
    teacher_h: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between hidden states ``(batch, seq, dim)`` over real tokens only.

    The mean runs over the real (mask 1) tokens and all hidden units, so padding never
    contributes and the value does not depend on how much padding a batch has.
    """
    _check_same_shape(student_h, teacher_h, "hidden_mse")
    per_token = (student_h.float() - teacher_h.detach().float()).pow(2).mean(-1)
    if attention_mask is not None and attention_mask.shape != per_token.shape:
        raise ValueError(
            f"hidden_mse: attention_mask shape {tuple(attention_mask.shape)} does not match "
            f"the hidden states' (batch, seq) {tuple(per_token.shape)}"
        )
    return _masked_row_mean(per_token, attention_mask)


def regression_mse(student_pred: torch.Tensor, teacher_pred: torch.Tensor) -> torch.Tensor:
    """Distillation loss for regression heads: MSE between predictions.

    ``(batch,)`` and ``(batch, 1)`` are treated alike.
    """
    s = student_pred.float()
    t = teacher_pred.detach().float()
    if s.dim() == 2 and s.shape[-1] == 1:
        s = s.squeeze(-1)
    if t.dim() == 2 and t.shape[-1] == 1:
        t = t.squeeze(-1)
    _check_same_shape(s, t, "regression_mse")
    return F.mse_loss(s, t)
