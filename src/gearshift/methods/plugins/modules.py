"""The plugin's modules: merge k neighbouring token vectors into one, and restore n vectors.

Shapes: B batch, n tokens, d hidden size, k compression ratio, m = ceil(n / k) windows,
r bottleneck of the restorer's adapter.

Padding. The authors' code pools pad vectors together with real ones and needs n divisible
by k. Here every pad vector is zeroed and gets weight 0 (its score is the most negative
float before the softmax, and the softmax output is multiplied by the keep mask), so a real
token's merged vector never depends on how much padding its batch has. Lengths that are not
a multiple of k are padded internally the same way. A window of pads only merges to the
zero vector and is marked as padding in the merged keep mask (a merged vector is real when
any token of its window is), so attention on the merged sequence ignores it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MergeInfo:
    """What the restorer needs to know about one merge.

    ``first_kept``: the first token ran unmerged (it is element 0 of the merged sequence).
    ``merged_keep``: (B, m') True where a merged vector holds at least one real token, or
    None when every merged vector does (the runtime's convention for "no padding").
    """

    n: int
    first_kept: bool
    merged_keep: torch.Tensor | None


class TokenMerger(nn.Module):
    """Weighted pooling over fixed windows of k consecutive vectors.

    ``learned=True`` (the paper): the k*d window, flattened, goes through Linear(k*d -> k); a
    softmax over the window's real slots gives the weights. The projection starts at zero, so
    a fresh merger takes the plain mean of each window. ``learned=False``: always the mean of
    the window's real vectors (the training-free baseline), no parameters.
    ``keep_first_token``: the first vector ([CLS]) is not merged; it leads the output as is.
    """

    def __init__(
        self, hidden_size: int, k: int, learned: bool = True, keep_first_token: bool = False
    ) -> None:
        super().__init__()
        self.k, self.hidden_size = k, hidden_size
        self.keep_first_token = keep_first_token
        self.score = nn.Linear(k * hidden_size, k) if learned else None
        if self.score is not None:
            nn.init.zeros_(self.score.weight)
            nn.init.zeros_(self.score.bias)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> tuple[torch.Tensor, MergeInfo]:
        """Merge ``x`` (B, n, d) with real-token mask ``keep`` (B, n) or None.

        Returns the merged sequence (B, m', d), m' = ceil(n / k) (plus 1 with the first token
        kept), and the :class:`MergeInfo` to restore it.
        """
        B, n, d = x.shape
        k = self.k
        first = self.keep_first_token
        if first and n == 1:  # nothing to merge
            merged_keep = None if keep is None or bool(keep.all()) else keep[:, :1].bool()
            return x, MergeInfo(n=n, first_kept=True, merged_keep=merged_keep)
        head, body = (x[:, :1], x[:, 1:]) if first else (None, x)
        body_keep = None if keep is None else (keep[:, 1:] if first else keep)
        nb = body.shape[1]
        m = math.ceil(nb / k)
        pad = m * k - nb

        slot_keep = None  # (B, m*k) bool, None = every slot is a real token
        if body_keep is not None:
            slot_keep = body_keep.bool()
            mask = slot_keep.unsqueeze(-1).to(body.dtype)
        if pad:  # copy once into a zeroed (B, m*k, d) buffer, pads zeroed in place
            padded = body.new_zeros(B, m * k, d)
            padded[:, :nb] = body
            if body_keep is not None:
                padded[:, :nb] *= mask
            body = padded
            if slot_keep is None:
                slot_keep = torch.ones(B, nb, dtype=torch.bool, device=x.device)
            slot_keep = F.pad(slot_keep, (0, pad), value=False)
        elif body_keep is not None:
            body = body * mask  # pads contribute nothing

        windows = body.reshape(B, m, k, d)
        if self.score is not None:
            logits = self.score(windows.reshape(B, m, k * d))  # (B, m, k)
        else:
            logits = windows.new_zeros(B, m, k)
        merged_keep = None
        if slot_keep is not None:
            slot_keep = slot_keep.view(B, m, k)
            # The most negative float, not -inf: a window of pads only then gets finite
            # (uniform) scores, zeroed by the mask, and no NaN reaches the gradient.
            logits = logits.masked_fill(~slot_keep, torch.finfo(logits.dtype).min)
            weights = logits.softmax(dim=-1) * slot_keep.to(logits.dtype)
            any_real = slot_keep.any(dim=-1)  # (B, m)
            if not bool(any_real.all()):
                merged_keep = any_real
        else:
            weights = logits.softmax(dim=-1)
        merged = (weights.unsqueeze(-2) @ windows).squeeze(-2)  # (B, m, d)

        if first:
            merged = torch.cat([head, merged], dim=1)
            if merged_keep is not None:
                head_keep = keep[:, :1].bool()
                merged_keep = torch.cat([head_keep, merged_keep], dim=1)
        return merged, MergeInfo(n=n, first_kept=first, merged_keep=merged_keep)


class TokenRestorer(nn.Module):
    """Repeat each merged vector k times, plus a per-token correction (the paper's adapter).

    ``y_i = u_w + W_up tanh(W_down [u_w ; x_i])`` for token i of window w, where u_w is the
    merged output and x_i the token's own input. ``W_down`` is the paper's Linear(2d -> r),
    stored as its two halves: the half that reads u_w runs once per window (before the
    repeat), which gives the same result with fewer FLOPs. ``W_up`` starts at zero, so a fresh
    restorer only repeats. ``bottleneck=0``: no adapter, no parameters, plain repetition.
    """

    def __init__(self, hidden_size: int, k: int, bottleneck: int) -> None:
        super().__init__()
        self.k = k
        self.bottleneck = bottleneck
        if bottleneck:
            self.down_merged = nn.Linear(hidden_size, bottleneck)  # W_down[:, :d] and its bias
            self.down_token = nn.Linear(hidden_size, bottleneck, bias=False)  # W_down[:, d:]
            self.up = nn.Linear(bottleneck, hidden_size)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def _windows(self, t: torch.Tensor) -> Iterator[tuple[torch.Tensor, slice]]:
        """Split (B, n, c) into views of whole windows (B, w, k, c) and the short last one.

        Yields (view, window indices) pairs, so a per-window tensor (B, m, c) broadcasts onto
        each view with ``u[:, index].unsqueeze(2)``: no repeated copy of it is made. The views
        are made one at a time, after the caller's in-place write to the previous one, as
        autograd requires.
        """
        B, n, c = t.shape
        whole = n // self.k
        if whole:
            yield t[:, : whole * self.k].view(B, whole, self.k, c), slice(0, whole)
        if n > whole * self.k:
            yield t[:, whole * self.k :].unsqueeze(1), slice(whole, whole + 1)

    def forward(self, u: torch.Tensor, x: torch.Tensor, info: MergeInfo) -> torch.Tensor:
        """Restore ``u`` (B, m', d) to (B, n, d) using the per-token inputs ``x`` (B, n, d).

        No repeat is materialised and nothing is concatenated: each merged vector is added
        in place, window by window, onto the adapter's output (or copied into an empty buffer
        when there is no adapter), and an unmerged first token is written into its own slot.
        """
        off = 1 if info.first_kept else 0
        body_u = u[:, off:]
        if self.bottleneck:
            # The adapter runs on every token, the first too (a single row, overwritten
            # below), so its output is already the full-length result buffer.
            a = self.down_token(x)  # (B, n, r)
            merged = self.down_merged(body_u)  # (B, m, r): once per window
            for view, index in self._windows(a[:, off:]):
                view.add_(merged[:, index].unsqueeze(2))
            out = self.up(torch.tanh(a))  # (B, n, d)
            for view, index in self._windows(out[:, off:]):
                view.add_(body_u[:, index].unsqueeze(2))
        else:
            out = x.new_empty(x.shape)
            for view, index in self._windows(out[:, off:]):
                view.copy_(body_u[:, index].unsqueeze(2).expand_as(view))
        if off:
            out[:, :1] = u[:, :1]
        return out
