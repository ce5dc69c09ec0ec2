"""The row-wise autoencoder of Banaei et al. (EACL 2023), and our activation-weighted variant.

Each row ``w_i`` of a weight matrix (or of several layers' matrices stacked: grouped mode)
is one training sample. The encoder (m -> d, LeakyReLU) gives its code ``z_i``; the decoder
(d -> 2d -> 4d -> m, LeakyReLU, final tanh) gives a direction, and the row's stored norm is
put back: ``w_hat_i = D(z_i) ||w_i|| / ||D(z_i)||``. After training only the codes, the
decoder and the norms are kept.

Loss (the paper's): ``0.909 mean(1 - cos(w_hat_i, w_i)) + 0.091 RMSE(w_hat - w)``, each
row optionally weighted by its Fisher importance. Adam, lr 1e-3.

Our extension (``ae-act``): the loss is the *output* error under the calibration inputs,
``||X_l (w_i - w_hat_i)||^2 = e_i^T G_l e_i`` (``G_l = X_l^T X_l`` of the row's layer),
relative to ``w_i^T G_l w_i``, mixed with a little of the paper's loss. ``G_l`` enters as a
factor ``S_l`` (m x k) from its leading eigenvectors (``||e_i S_l||^2``), covering all but
1e-4 of its trace, which keeps each training step cheap.

Optionally (``ae_refine_steps``), the stored codes are then optimised directly with the
decoder, the encoder set aside.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gearshift.methods.factorize.config import FactorizeConfig
from gearshift.methods.factorize.modules import RowDecoder, RowEncoder, restore_norms

ENERGY_KEPT = 1 - 1e-4  # share of tr(G) kept by the ae-act loss's factor of G


@dataclass
class OutputWeighting:
    """The ae-act loss's view of the calibration inputs, for a stack of rows.

    ``factors``: per member ``(start, stop, S)``: rows ``start:stop`` have error
    ``||e S||^2``; ``row_scale``: (N,) per-row multipliers of ``||e||^2`` instead (the word
    embedding, whose ``G`` is the diagonal of token counts, or a transposed Linear's
    diagonal). Either is normalised so that the rows' own ``w`` score 1 on average.
    """

    factors: list[tuple[int, int, torch.Tensor]] = field(default_factory=list)
    row_scale: torch.Tensor | None = None


def gram_factor(gram: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``S`` (m x k) with ``S S^T ~ G`` (leading eigenvectors), scaled so that
    ``mean_i ||w_i S||^2 = 1`` over ``rows``: errors become relative output errors."""
    g = gram.double()
    values, vectors = torch.linalg.eigh((g + g.t()) / 2)
    values = values.clamp_min(0).flip(0)
    vectors = vectors.flip(1)
    total = float(values.sum())
    if total <= 0:
        s = torch.eye(g.shape[0], dtype=torch.float64)
    else:
        k = int((values.cumsum(0) < ENERGY_KEPT * total).sum()) + 1
        k = min(k, len(values))
        s = vectors[:, :k] * values[:k].sqrt()
    scale = float(((rows.double() @ s) ** 2).sum(1).mean())
    if scale > 0:
        s = s / math.sqrt(scale)
    return s.float()


@dataclass
class AutoencoderResult:
    """Trained codes (N x d), norms (N,), the decoder, and the loss curve."""

    codes: torch.Tensor
    norms: torch.Tensor
    decoder: RowDecoder
    history: list[dict[str, float]]
    seconds: float

    def reconstruct(self) -> torch.Tensor:
        """The rebuilt rows (N x m), without gradients."""
        with torch.no_grad():
            return restore_norms(self.decoder(self.codes), self.norms)


def paper_loss(
    w_hat: torch.Tensor,
    w: torch.Tensor,
    config: FactorizeConfig,
    row_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``cos_weight * mean(1 - cos) + rmse_weight * RMSE``, rows weighted if given."""
    one_minus_cos = 1 - F.cosine_similarity(w_hat, w, dim=1, eps=1e-12)
    sq = ((w_hat - w) ** 2).mean(1)
    if row_weights is None:
        cos_term, mse = one_minus_cos.mean(), sq.mean()
    else:
        total = row_weights.sum()
        cos_term = (row_weights * one_minus_cos).sum() / total
        mse = (row_weights * sq).sum() / total
    return config.ae_cos_weight * cos_term + config.ae_rmse_weight * torch.sqrt(mse + 1e-20)


def output_loss(
    w_hat: torch.Tensor, w: torch.Tensor, index: torch.Tensor, weighting: OutputWeighting
) -> torch.Tensor:
    """Mean relative output error of the batch rows (``index`` into the stacked rows)."""
    e = w_hat - w
    if weighting.row_scale is not None:
        return (weighting.row_scale[index] * (e**2).sum(1)).mean()
    total = e.new_zeros(())
    for start, stop, s in weighting.factors:
        mask = (index >= start) & (index < stop)
        if bool(mask.any()):
            total = total + ((e[mask] @ s) ** 2).sum()
    return total / e.shape[0]


def train_row_autoencoder(
    rows: torch.Tensor,
    code_size: int,
    config: FactorizeConfig,
    row_weights: torch.Tensor | None = None,
    weighting: OutputWeighting | None = None,
    desc: str = "autoencoder",
) -> AutoencoderResult:
    """Train the autoencoder on ``rows`` (N x m); return the codes, norms and decoder.

    ``row_weights`` (N,): Fisher importances for the paper's loss; ``weighting``: makes it
    the activation-weighted loss (``config.ae_act_mix`` of output error). The encoder reads
    each row scaled to norm sqrt(m) (its norm is stored separately, only its direction needs
    a code).
    """
    start_time = time.perf_counter()
    gen = torch.Generator().manual_seed(config.seed)
    torch_state = torch.get_rng_state()
    torch.manual_seed(config.seed)
    try:
        rows = rows.detach().float()
        n, m = rows.shape
        norms = rows.norm(dim=1)
        unit = rows / norms.clamp_min(1e-12).unsqueeze(1) * math.sqrt(m)
        encoder = RowEncoder(m, code_size, config.ae_negative_slope)
        decoder = RowDecoder(code_size, m, config.ae_decoder_widths, config.ae_negative_slope)
    finally:
        torch.set_rng_state(torch_state)
    weights = row_weights.float() if row_weights is not None else None
    mix = config.ae_act_mix if weighting is not None else 0.0

    def loss_of(w_hat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        w = rows[index]
        loss = paper_loss(w_hat, w, config, weights[index] if weights is not None else None)
        if weighting is not None:
            loss = mix * output_loss(w_hat, w, index, weighting) + (1 - mix) * loss
        return loss

    history = _fit(
        lambda index: restore_norms(decoder(encoder(unit[index])), norms[index]),
        loss_of,
        [*encoder.parameters(), *decoder.parameters()],
        n,
        config.ae_steps,
        config,
        gen,
        desc,
    )
    with torch.no_grad():
        codes = torch.cat([encoder(unit[i : i + 4096]) for i in range(0, n, 4096)])
    if config.ae_refine_steps:
        # The codes are stored anyway: optimise them (with the decoder) directly, which
        # removes the encoder's amortisation gap.
        free = torch.nn.Parameter(codes.clone())
        history += _fit(
            lambda index: restore_norms(decoder(free[index]), norms[index]),
            loss_of,
            [free, *decoder.parameters()],
            n,
            config.ae_refine_steps,
            config,
            gen,
            desc + " (codes)",
            first_step=config.ae_steps,
        )
        codes = free.detach()
    return AutoencoderResult(codes, norms, decoder, history, time.perf_counter() - start_time)


def _fit(
    forward, loss_of, params, n, steps, config, gen, desc, first_step=0
) -> list[dict[str, float]]:
    """Adam over ``steps`` batches of row indices (reshuffled each epoch); the loss curve."""
    opt = torch.optim.Adam(params, lr=config.ae_lr)
    sched = None
    if config.ae_lr_schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))
        )
    batch = min(config.ae_batch_rows, n)
    order, pos = torch.randperm(n, generator=gen), 0
    history: list[dict[str, float]] = []
    every = max(1, steps // 20)
    running, seen = 0.0, 0
    bar = tqdm(range(steps), desc=desc, disable=not config.progress, leave=False)
    for step in bar:
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        index = order[pos : pos + batch]
        pos += batch
        loss = loss_of(forward(index), index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        running += loss.item()
        seen += 1
        if (step + 1) % every == 0 or step + 1 == steps:
            history.append({"step": first_step + step + 1, "loss": running / seen})
            bar.set_postfix(loss=f"{running / seen:.4f}")
            running, seen = 0.0, 0
    return history
