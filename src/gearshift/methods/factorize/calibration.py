"""Calibration: what the data-aware methods read from a few hundred examples.

- ``X^T X`` of each compressed Linear's inputs (real tokens only, padding left out), and
  the token counts of the word embedding (its inputs are one-hot, so its ``X^T X`` is the
  diagonal of counts): for whitened SVD and the activation-weighted autoencoder.
- Squared gradients of the task loss with respect to each compressed weight, summed over
  the calibration batches (the empirical Fisher information, as FWSVD uses it): for FWSVD
  and the autoencoder's optional Fisher row weights. Batches without labels use labels
  sampled from the model's own prediction (the true Fisher of the model's distribution).

All statistics come from the uncompressed model.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from gearshift.errors import ConfigError

logger = logging.getLogger("gearshift.factorize")

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


@dataclass
class CalibrationStats:
    """Statistics of the calibration data, keyed by module name (``blocks.0.attn.q``, ...).

    ``grams``: ``X^T X`` (m x m, float64) over real tokens; ``tokens``: how many tokens each
    gram sums; ``token_counts``: (vocab,) occurrences of each token id (the embedding's
    ``X^T X`` diagonal); ``fisher``: summed squared gradients, shaped like the weight.
    ``gram_seconds`` and ``fisher_seconds`` time the two passes (``seconds``: both).
    """

    grams: dict[str, torch.Tensor] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    token_counts: torch.Tensor | None = None
    fisher: dict[str, torch.Tensor] = field(default_factory=dict)
    examples: int = 0
    seconds: float = 0.0
    gram_seconds: float = 0.0
    fisher_seconds: float = 0.0

    def seconds_for(self, gram: bool, fisher: bool) -> float:
        """The collection time a method needing these statistics would have spent."""
        return (self.gram_seconds if gram else 0.0) + (self.fisher_seconds if fisher else 0.0)


def _inputs(batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {
        k: torch.as_tensor(batch[k]).to(device) for k in MODEL_INPUTS if batch.get(k) is not None
    }


def collect_statistics(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    linears: Mapping[str, nn.Linear],
    embedding: nn.Embedding | None = None,
    gram: bool = True,
    fisher: bool = False,
    progress: bool = True,
) -> CalibrationStats:
    """Run ``model`` over ``batches`` and return the :class:`CalibrationStats` asked for.

    ``linears`` maps names to the Linear modules whose inputs (``gram``) and weight gradients
    (``fisher``) are collected; ``embedding`` is the word embedding (token counts, and its
    gradient rows for ``fisher``). The model's mode and ``requires_grad`` flags are restored.
    """
    stats = CalibrationStats()
    start = time.perf_counter()
    batches = list(batches)
    if not batches:
        raise ConfigError("calibration needs at least one batch; got none")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        if gram:
            _collect_grams(model, batches, linears, embedding, stats, device, progress)
            stats.gram_seconds = time.perf_counter() - start
        if fisher:
            fisher_start = time.perf_counter()
            _collect_fisher(model, batches, linears, embedding, stats, device, progress)
            stats.fisher_seconds = time.perf_counter() - fisher_start
    finally:
        model.train(was_training)
    stats.examples = sum(int(torch.as_tensor(b["input_ids"]).shape[0]) for b in batches)
    stats.seconds = time.perf_counter() - start
    return stats


def _collect_grams(model, batches, linears, embedding, stats, device, progress) -> None:
    keep_now: list[torch.Tensor | None] = [None]
    per_batch: dict[tuple, tuple] = {}  # q, k, v read the same input: one product

    def hook(name: str):
        def run(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0].detach()
            key = (x.data_ptr(), tuple(x.shape))
            if key not in per_batch:
                keep = keep_now[0]
                if keep is not None and tuple(x.shape[:2]) == tuple(keep.shape):
                    rows = x[keep]
                else:
                    rows = x.reshape(-1, x.shape[-1])
                rows = rows.float()
                # x is kept alive with its product, so its memory (the cache key) is not
                # reused by another layer's input within this batch.
                per_batch[key] = (rows.t() @ rows, rows.shape[0], x)
            g, count, _ = per_batch[key]
            if name in stats.grams:
                stats.grams[name] += g.double()
            else:
                stats.grams[name] = g.double()
            stats.tokens[name] = stats.tokens.get(name, 0) + count

        return run

    handles = [module.register_forward_hook(hook(name)) for name, module in linears.items()]
    try:
        with torch.no_grad():
            for batch in tqdm(
                batches, desc="calibration: X^T X", disable=not progress, leave=False
            ):
                inputs = _inputs(batch, device)
                mask = inputs.get("attention_mask")
                keep = (
                    mask.bool()
                    if mask is not None
                    else torch.ones_like(inputs["input_ids"], dtype=torch.bool)
                )
                keep_now[0] = keep
                per_batch.clear()
                model(**inputs)
                if embedding is not None:
                    ids = inputs["input_ids"][keep]
                    counts = torch.bincount(ids.flatten().cpu(), minlength=embedding.num_embeddings)
                    counts = counts[: embedding.num_embeddings].double()
                    stats.token_counts = (
                        counts if stats.token_counts is None else stats.token_counts + counts
                    )
    finally:
        for h in handles:
            h.remove()
        per_batch.clear()


def _pseudo_labels(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Labels drawn from the model's own predictive distribution (no labels given)."""
    kind = model.config.head.kind
    if kind == "regression":
        return (logits + torch.randn_like(logits)).detach()
    probs = logits.detach().float().softmax(-1)
    return torch.distributions.Categorical(probs=probs).sample()


def _collect_fisher(model, batches, linears, embedding, stats, device, progress) -> None:
    head = getattr(getattr(model, "config", None), "head", None)
    if head is None or head.kind is None:
        raise ConfigError(
            "Fisher weights need a task loss, but the model has no task head: load it with a "
            "head (a fine-tuned teacher), or use a method without Fisher weights (svd, svdllm)"
        )
    weights = {name: m.weight for name, m in linears.items()}
    if embedding is not None:
        weights["embeddings.word"] = embedding.weight
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    generator_state = torch.get_rng_state()
    torch.manual_seed(0)  # sampled pseudo-labels are reproducible
    sampled = False
    try:
        for batch in tqdm(batches, desc="calibration: Fisher", disable=not progress, leave=False):
            inputs = _inputs(batch, device)
            out = model(**inputs)
            labels = batch.get("labels")
            if labels is None:
                labels = _pseudo_labels(model, out.logits)
                sampled = True
            else:
                labels = torch.as_tensor(labels).to(device)
            loss = model.task_loss(out.logits, labels)
            grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
            for (name, w), g in zip(weights.items(), grads):
                if g is None:
                    g = torch.zeros_like(w)
                sq = g.detach().float() ** 2
                stats.fisher[name] = stats.fisher[name] + sq if name in stats.fisher else sq
    finally:
        torch.set_rng_state(generator_state)
        for p, flag in flags.items():
            p.requires_grad_(flag)
    if sampled:
        logger.info(
            "calibration batches carry no labels: Fisher from labels sampled from the "
            "model's predictions"
        )


# ---------------------------------------------------------------------- calibration data
def calibration_batches(
    tokenizer: Any,
    source: str = "task",
    task: Any = None,
    examples: int = 256,
    batch_size: int = 16,
    max_length: int = 128,
    seed: int = 0,
    data_dir: str | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Return calibration batches (padded tensors) of ``examples`` inputs.

    ``source="task"``: a random sample (``seed``) of ``task``'s train split, with labels;
    ``source="text"``: the first ``examples`` paragraphs of WikiText-2 dev, no labels.
    Inputs are truncated to ``max_length`` tokens.
    """
    from gearshift.data import (
        encode_examples,
        get_task,
        load_examples,
        make_collator,
        make_dataloader,
    )

    if examples < 1:
        raise ConfigError(f"calibration examples must be >= 1, got {examples}")
    if source == "text":
        spec = get_task("wikitext2")
        chosen = load_examples(spec, "dev", data_dir=data_dir, limit=examples)
    elif source == "task":
        if task is None:
            raise ConfigError(
                "calibration from a task needs the task (e.g. --task sst2); "
                "or use raw text (--calibration text)"
            )
        spec = get_task(task)
        pool = load_examples(spec, "train", data_dir=data_dir)
        rng = random.Random(seed)
        chosen = pool if len(pool) <= examples else rng.sample(pool, examples)
    else:
        raise ConfigError(f"calibration source {source!r} unknown: use task or text")
    features = encode_examples(chosen, tokenizer, spec, max_length=max_length)
    loader = make_dataloader(features, make_collator(tokenizer, spec), batch_size=batch_size)
    return [dict(b) for b in loader]


def relative_output_error(weight: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor) -> float:
    """``||X (W - W_hat)^T||^2 / ||X W^T||^2`` computed from ``G = X^T X`` (no X needed)."""
    e = (weight - approx).double()
    w = weight.double()
    g = gram.double()
    num = float(((e @ g) * e).sum())
    den = float(((w @ g) * w).sum())
    return num / den if den > 0 else float("nan")


def relative_weight_error(weight: torch.Tensor, approx: torch.Tensor) -> float:
    """``||W - W_hat||_F / ||W||_F``."""
    den = float(weight.double().norm())
    return float((weight - approx).double().norm()) / den if den > 0 else float("nan")


def token_weighted_error(weight: torch.Tensor, approx: torch.Tensor, counts: torch.Tensor) -> float:
    """The embedding's relative output error: rows weighted by how often each token occurs."""
    c = counts.double().unsqueeze(1)
    num = float((((weight - approx).double() ** 2) * c).sum())
    den = float(((weight.double() ** 2) * c).sum())
    return num / den if den > 0 else float("nan")
