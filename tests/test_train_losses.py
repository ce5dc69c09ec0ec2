"""Distillation losses against hand-computed values."""

import math

import pytest
import torch

from gearshift.errors import ConfigError
from gearshift.train import hidden_mse, kd_kl, regression_mse, soft_ce

LN3 = math.log(3.0)


def test_kd_kl_hand_computed():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[LN3, 0.0]])  # teacher probabilities 3/4, 1/4
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_kl(s, t, temperature=1.0).item() == pytest.approx(expected, abs=1e-6)
    # T = 2: teacher logits halve -> p = sqrt(3) / (sqrt(3) + 1); scaled by T^2 = 4.
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    expected_t2 = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert kd_kl(s, t, temperature=2.0).item() == pytest.approx(expected_t2, abs=1e-6)
    assert kd_kl(t, t, temperature=3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_soft_ce_hand_computed_and_mask():
    s = torch.tensor([[0.0, 0.0], [LN3, 0.0]])
    t = torch.tensor([[LN3, 0.0], [LN3, 0.0]])
    row0 = math.log(2.0)  # -(3/4 ln 1/2 + 1/4 ln 1/2)
    row1 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # teacher entropy
    assert soft_ce(s, t).item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    assert soft_ce(s, t, mask=torch.tensor([1, 0])).item() == pytest.approx(row0, abs=1e-6)
    # Per-token logits (batch 1, seq 2, vocab 2) with a padding mask.
    assert soft_ce(s[None], t[None], mask=torch.tensor([[0, 1]])).item() == pytest.approx(
        row1, abs=1e-6
    )
    # kd_kl = soft_ce - teacher entropy (T = 1).
    assert kd_kl(s, t).item() == pytest.approx((row0 + row1) / 2 - row1, abs=1e-6)


def test_hidden_mse_counts_real_tokens_only():
    s = torch.zeros(1, 3, 2)
    t = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert hidden_mse(s, t, mask).item() == pytest.approx((1 + 1 + 4 + 4) / 4)
    assert hidden_mse(s, t).item() == pytest.approx((1 + 1 + 4 + 4 + 2e4) / 6)
    with pytest.raises(ValueError, match="attention_mask"):
        hidden_mse(s, t, torch.ones(1, 2))


def test_regression_mse_and_no_grad_to_teacher():
    s = torch.tensor([1.0, 2.0], requires_grad=True)
    t = torch.tensor([[1.5], [2.5]], requires_grad=True)
    loss = regression_mse(s, t)
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert s.grad is not None and t.grad is None
    logits = torch.randn(2, 3, requires_grad=True)
    teacher = torch.randn(2, 3, requires_grad=True)
    kd_kl(logits, teacher, 2.0).backward()
    assert logits.grad is not None and teacher.grad is None


def test_loss_argument_checks():
    x = torch.zeros(1, 2)
    with pytest.raises(ConfigError, match="temperature"):
        kd_kl(x, x, temperature=0)
    with pytest.raises(ValueError, match="shape"):
        soft_ce(x, torch.zeros(1, 3))
    assert kd_kl(x.half(), x.half()).dtype == torch.float32
