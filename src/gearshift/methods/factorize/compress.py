"""``compress(model, config, calibration_batches)``: the one entry point of offline compression.

Steps: pick the targets and units (:mod:`.model`), read the calibration statistics the method
needs from the *uncompressed* model (:mod:`.calibration`), solve each unit's rank or code size
from the target ratio (:mod:`.budget`), factorize it (:mod:`.svd`, :mod:`.autoencoder`), and
swap the compressed modules in. The report counts storage and FLOPs separately: low-rank
modules save both, decoded (autoencoder) modules save storage only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from gearshift.errors import ConfigError
from gearshift.measure import count_parameters, fixed_threads
from gearshift.methods.factorize import budget
from gearshift.methods.factorize.autoencoder import (
    OutputWeighting,
    gram_factor,
    train_row_autoencoder,
)
from gearshift.methods.factorize.calibration import (
    CalibrationStats,
    collect_statistics,
    relative_output_error,
    relative_weight_error,
    token_weighted_error,
)
from gearshift.methods.factorize.config import EMBEDDING_TYPE, LOW_RANK_METHODS, FactorizeConfig
from gearshift.methods.factorize.model import Target, Unit, find_targets, plan_units
from gearshift.methods.factorize.svd import (
    low_rank_factors,
    row_weights_from_importance,
    whitening_from_gram,
)
from gearshift.runtime.edits import record_forms
from gearshift.runtime.forms import (
    DecodedEmbedding,
    DecodedLinear,
    LowRankEmbedding,
    LowRankLinear,
    RowDecoder,
    materialize,
    replace_module,
)

logger = logging.getLogger("gearshift.factorize")


@dataclass
class CompressionReport:
    """What compression did, per unit and per module, with storage and FLOPs kept apart.

    ``original_weights``: weights of the compressed matrices; ``stored``: parameters stored in
    their place (factors, or codes + decoders + row norms; a shared basis or decoder once);
    ``achieved_ratio`` = original_weights / stored. ``flops_per_token_*``: matmul FLOPs of the
    compressed modules for one token (2 per multiply-add; a dense embedding lookup is 0).
    ``decode_flops``: the one-off cost of rebuilding decoded weights at load time.
    ``params_before/after``: the whole model's parameters (biases, norms, head included).
    """

    method: str
    target_ratio: float
    grouped: bool
    units: list[dict[str, Any]] = field(default_factory=list)
    modules: list[dict[str, Any]] = field(default_factory=list)
    original_weights: int = 0
    stored: int = 0
    achieved_ratio: float = 0.0
    params_before: int = 0
    params_after: int = 0
    flops_per_token_before: int = 0
    flops_per_token_after: int = 0
    decode_flops: int = 0
    calibration_examples: int = 0
    calibration_seconds: float = 0.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary_dict(self) -> dict[str, Any]:
        """The totals without the per-unit and per-module lists."""
        d = self.to_dict()
        d.pop("units")
        d.pop("modules")
        return d

    def summary(self) -> str:
        """A few lines for people: ratio, storage, FLOPs, time."""
        lines = [
            f"{self.method}{' (grouped)' if self.grouped else ''}: {len(self.modules)} matrices in "
            f"{len(self.units)} units, target ratio {self.target_ratio:g}, achieved "
            f"{self.achieved_ratio:.2f} ({self.original_weights / 1e6:.2f}M -> {self.stored / 1e6:.2f}M "
            "stored)",
            f"model parameters {self.params_before / 1e6:.2f}M -> {self.params_after / 1e6:.2f}M",
            f"FLOPs per token in the compressed modules {self.flops_per_token_before / 1e6:.2f}M -> "
            f"{self.flops_per_token_after / 1e6:.2f}M"
            + (
                f" (+{self.decode_flops / 1e9:.2f} GFLOPs once at load to rebuild weights)"
                if self.decode_flops
                else ""
            ),
            f"time {self.seconds:.1f} s (calibration {self.calibration_seconds:.1f} s on "
            f"{self.calibration_examples} examples)",
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


# ---------------------------------------------------------------------- entry point
def calibrate(
    model: nn.Module,
    config: FactorizeConfig,
    calibration_batches: Iterable[Mapping[str, Any]],
    fisher: bool | None = None,
) -> CalibrationStats:
    """The calibration statistics of ``model`` for the modules ``config`` compresses.

    Collect them once and pass them as ``compress(..., stats=...)`` to compress copies of
    the same model several times (methods, ratios, modes) without re-reading the data.
    ``fisher``: also the Fisher weights (default: only if ``config`` needs them; pass True
    to serve fwsvd and ``ae_fisher`` too).
    """
    targets = find_targets(model, config)
    linears = {t.name: t.module for t in targets if t.type != EMBEDDING_TYPE}
    emb = next((t.module for t in targets if t.type == EMBEDDING_TYPE), None)
    return collect_statistics(
        model,
        calibration_batches,
        linears,
        emb,
        gram=True,  # also for methods that do not need it: the report's output errors
        fisher=config.needs_fisher if fisher is None else fisher,
        progress=config.progress,
    )


def _check_stats(stats: CalibrationStats, targets: list[Target], config: FactorizeConfig) -> None:
    """Refuse statistics that do not cover what ``config`` reads from them."""
    missing = [t.name for t in targets if t.type != EMBEDDING_TYPE and t.name not in stats.grams]
    if any(t.type == EMBEDDING_TYPE for t in targets) and stats.token_counts is None:
        missing.append("word embedding token counts")
    if config.needs_fisher:
        missing += [f"Fisher of {t.name}" for t in targets if t.name not in stats.fisher]
    if missing:
        raise ConfigError(
            f"the calibration statistics given do not cover {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}: collect them with "
            f"calibrate(model, config, batches{', fisher=True' if config.needs_fisher else ''}) "
            "on the same (uncompressed) model"
        )


def compress(
    model: nn.Module,
    config: FactorizeConfig,
    calibration_batches: Iterable[Mapping[str, Any]] | None = None,
    stats: CalibrationStats | None = None,
) -> tuple[nn.Module, CompressionReport]:
    """Compress ``model`` in place; return ``(model, report)``.

    ``calibration_batches`` (padded batch dicts, a few hundred examples) are needed by
    svdllm and ae-act (inputs' X^T X) and by fwsvd and ``ae_fisher`` (task-loss gradients);
    given to any method, they also yield each module's relative output error in the report.
    ``stats``: statistics already collected from this model by :func:`calibrate` (then the
    batches are not read); the report's times charge the collection passes this method
    needs, so they stay comparable with a compression that collects its own.
    The compressed modules' forms are recorded in ``model.config`` (so the model saves and
    loads as a plain model); the config is recorded as ``model.factorize_config`` and the
    report as ``model.factorize_report`` (both saved by :func:`save_factorized`).
    """
    config.validate()
    start = time.perf_counter()
    targets = find_targets(model, config)
    if not targets:
        raise ConfigError(
            f"nothing to compress: no {', '.join(config.modules)} in the selected layers"
        )
    units = plan_units(targets, config)
    report = CompressionReport(config.method, config.ratio, config.grouped)
    report.params_before = count_parameters(model)

    charged = 0.0  # collection time spent before this call, on this method's behalf
    if stats is not None:
        _check_stats(stats, targets, config)
        charged = stats.seconds_for(config.needs_gram, config.needs_fisher)
        report.calibration_examples, report.calibration_seconds = stats.examples, charged
        report.notes.append(
            f"calibration statistics collected once and reused; {charged:.1f} s of collection "
            "charged (the passes this method needs)"
            if config.needs_gram or config.needs_fisher
            else "calibration statistics collected once and reused, for the report's output "
            "errors only: this method reads no data, no collection time charged"
        )
    elif config.needs_gram or config.needs_fisher or calibration_batches is not None:
        if calibration_batches is None:
            what = "X^T X of its inputs" if config.needs_gram else "Fisher weights"
            raise ConfigError(
                f"method {config.method} needs calibration data ({what}): pass calibration_batches, "
                "e.g. methods.factorize.calibration_batches(tokenizer, 'task', task='sst2')"
            )
        stats = calibrate(model, config, calibration_batches)
        report.calibration_examples, report.calibration_seconds = stats.examples, stats.seconds

    for unit in tqdm(units, desc=f"factorize ({config.method})", disable=not config.progress):
        unit_start = time.perf_counter()
        with fixed_threads(config.threads):
            if config.method in LOW_RANK_METHODS:
                new, info = _low_rank_unit(unit, config, stats, report.notes)
            else:
                new, info = _autoencoder_unit(unit, config, stats, report.notes)
        member_infos = info.pop("members")
        info["members"] = [t.name for t in unit.members]
        for target, module, minfo in zip(unit.members, new, member_infos):
            module.to(device=target.weight.device, dtype=target.weight.dtype)
            replace_module(model, target.name, module)
            report.modules.append(minfo)
        info["seconds"] = time.perf_counter() - unit_start
        report.units.append(info)
        report.original_weights += info["original_weights"]
        report.stored += info["stored"]
    materialize(model)
    if hasattr(model, "config"):
        record_forms(model)  # the config now describes the compressed model (saves as a model)
    report.achieved_ratio = report.original_weights / max(report.stored, 1)
    report.params_after = count_parameters(model)
    report.flops_per_token_before = sum(m["flops_per_token_before"] for m in report.modules)
    report.flops_per_token_after = sum(m["flops_per_token_after"] for m in report.modules)
    report.decode_flops = sum(m.get("decode_flops", 0) for m in report.modules)
    report.seconds = time.perf_counter() - start + charged
    model.factorize_config = config
    model.factorize_report = report
    logger.info("%s", report.summary())
    return model, report


# ---------------------------------------------------------------------- helpers
def _oriented(target: Target) -> torch.Tensor:
    return target.weight.float()


def _importance(stats: CalibrationStats | None, name: str, axis: int) -> torch.Tensor | None:
    if stats is None or name not in stats.fisher:
        return None
    return stats.fisher[name].double().sum(axis)


def _dense_flops(target: Target) -> int:
    if target.type == EMBEDDING_TYPE:
        return 0
    n, m = target.weight.shape
    return 2 * n * m


def _member_info(
    target: Target,
    kind: str,
    size: int,
    stored_own: int,
    flops_after: int,
    approx: torch.Tensor,
    stats: CalibrationStats | None,
) -> dict[str, Any]:
    w = target.weight.float()
    info = {
        "name": target.name,
        "type": target.type,
        "shape": list(w.shape),
        "form": kind,
        "rank" if kind.startswith("low_rank") else "code_size": size,
        "original_weights": w.numel(),
        "stored_own": stored_own,
        "flops_per_token_before": _dense_flops(target),
        "flops_per_token_after": flops_after,
        "weight_error": relative_weight_error(w, approx),
    }
    if stats is not None:
        if target.name in stats.grams:
            info["output_error"] = relative_output_error(w, approx, stats.grams[target.name])
        elif target.type == EMBEDDING_TYPE and stats.token_counts is not None:
            info["output_error"] = token_weighted_error(w, approx, stats.token_counts)
    return info


# ---------------------------------------------------------------------- SVD family
def _low_rank_unit(
    unit: Unit, config: FactorizeConfig, stats: CalibrationStats | None, notes: list[str]
) -> tuple[list[nn.Module], dict[str, Any]]:
    members = unit.members
    weights = [_oriented(t) for t in members]
    rows = [w.shape[0] for w in weights]
    m = weights[0].shape[1]
    stacked = torch.cat(weights)
    rank = budget.low_rank_size(rows, m, unit.ratio)
    row_weights = whitening = None
    how = "svd"
    if config.method == "fwsvd":
        parts = [_importance(stats, t.name, 1) for t in members]
        if any(p is None for p in parts):
            raise ConfigError(f"{unit.name}: no Fisher information collected")
        row_weights = row_weights_from_importance(torch.cat(parts), config.row_importance_floor)
        how = "fisher-weighted svd"
    elif config.method == "svdllm":
        if unit.type == EMBEDDING_TYPE:
            # One-hot inputs: X^T X is the diagonal of token counts, so whitening is a row weight.
            row_weights = row_weights_from_importance(
                stats.token_counts, config.row_importance_floor
            )
            how = "token-count weighted svd"
        else:
            gram = sum(stats.grams[t.name] for t in members)
            whitening = whitening_from_gram(gram, config.whitening_damping, unit.name)
            how = f"whitened svd ({whitening.how})"
            if whitening.how != "cholesky":
                notes.append(f"{unit.name}: whitening by {whitening.how}")
    u, v = low_rank_factors(stacked, rank, row_weights, whitening)
    approx_all = u @ v
    infos, modules = [], []
    if unit.type == EMBEDDING_TYPE:
        t = members[0]
        emb: nn.Embedding = t.module
        module = LowRankEmbedding(emb.num_embeddings, emb.embedding_dim, rank, emb.padding_idx)
        with torch.no_grad():
            module.codes.weight.copy_(u)
            module.projection.weight.copy_(v.t())
        modules.append(module)
        infos.append(
            _member_info(
                t,
                "low_rank_embedding",
                rank,
                rank * (emb.num_embeddings + m),
                2 * rank * m,
                approx_all,
                stats,
            )
        )
    else:
        basis = nn.Linear(m, rank, bias=False)
        with torch.no_grad():
            basis.weight.copy_(v)
        if unit.grouped:
            basis.group_name = unit.name
        offset = 0
        for t, n in zip(members, rows):
            lin: nn.Linear = t.module
            module = LowRankLinear(m, n, rank, lin.bias is not None, basis=basis)
            with torch.no_grad():
                module.coefficients.weight.copy_(u[offset : offset + n])
                if lin.bias is not None:
                    module.coefficients.bias.copy_(lin.bias)
            own = rank * n + (0 if unit.grouped else rank * m)
            infos.append(
                _member_info(
                    t,
                    "low_rank_linear",
                    rank,
                    own,
                    2 * rank * (n + m),
                    approx_all[offset : offset + n],
                    stats,
                )
            )
            modules.append(module)
            offset += n
    stored = budget.low_rank_stored(rows, m, rank)
    info = {
        "name": unit.name,
        "type": unit.type,
        "method": how,
        "members": infos,
        "layers": [t.block for t in members],
        "rows": rows,
        "row_size": m,
        "rank": rank,
        "target_ratio": unit.ratio,
        "original_weights": int(stacked.numel()),
        "stored": stored,
        "shared": rank * m if unit.grouped else 0,
    }
    return modules, info


# ---------------------------------------------------------------------- autoencoder
def _autoencoder_unit(
    unit: Unit, config: FactorizeConfig, stats: CalibrationStats | None, notes: list[str]
) -> tuple[list[nn.Module], dict[str, Any]]:
    members = unit.members
    is_emb = unit.type == EMBEDDING_TYPE
    n0, m0 = members[0].weight.shape
    transposed = (not is_emb) and config.ae_transpose == "auto" and n0 < m0
    weights = [(t.weight.float().t() if transposed else t.weight.float()) for t in members]
    rows = [w.shape[0] for w in weights]
    row_size = weights[0].shape[1]
    stacked = torch.cat(weights)
    total = stacked.shape[0]
    code = budget.code_size(total, row_size, unit.ratio, config.ae_decoder_widths)

    row_weights = None
    if config.ae_fisher:
        parts = [_importance(stats, t.name, 0 if transposed else 1) for t in members]
        if any(p is None for p in parts):
            raise ConfigError(f"{unit.name}: no Fisher information collected")
        row_weights = (
            row_weights_from_importance(torch.cat(parts), config.row_importance_floor) ** 2
        )

    weighting = None
    if config.method == "ae-act":
        weighting = OutputWeighting()
        if is_emb:
            imp = row_weights_from_importance(stats.token_counts, config.row_importance_floor) ** 2
            scale = (imp * (stacked.double() ** 2).sum(1)).mean()
            weighting.row_scale = (imp / scale).float()
        elif transposed:
            # Rows are input columns: the exact loss couples rows; keep the diagonal of G.
            diag = torch.cat([stats.grams[t.name].diagonal() for t in members]).double()
            scale = (diag * (stacked.double() ** 2).sum(1)).mean()
            weighting.row_scale = (diag / scale).float()
            notes.append(f"{unit.name}: ae-act on transposed rows uses the diagonal of X^T X")
        else:
            offset = 0
            for t, w in zip(members, weights):
                s = gram_factor(stats.grams[t.name], w)
                weighting.factors.append((offset, offset + w.shape[0], s))
                offset += w.shape[0]

    result = train_row_autoencoder(
        stacked, code, config, row_weights, weighting, desc=f"autoencoder {unit.name} (d={code})"
    )
    approx_all = result.reconstruct()
    decoder = result.decoder
    if unit.grouped:
        decoder.group_name = unit.name
    modules, infos = [], []
    offset = 0
    for t, n in zip(members, rows):
        sl = slice(offset, offset + n)
        if is_emb:
            emb: nn.Embedding = t.module
            module = DecodedEmbedding(
                emb.num_embeddings, emb.embedding_dim, code, decoder, emb.padding_idx
            )
            flops = 0
        else:
            lin: nn.Linear = t.module
            module = DecodedLinear(
                lin.in_features, lin.out_features, code, decoder, lin.bias is not None, transposed
            )
            if lin.bias is not None:
                with torch.no_grad():
                    module.bias.copy_(lin.bias)
            flops = 2 * lin.in_features * lin.out_features
        with torch.no_grad():
            module.codes.copy_(result.codes[sl])
            module.norms.copy_(result.norms[sl])
        approx = approx_all[sl].t() if transposed else approx_all[sl]
        own = (
            n * code
            + n
            + (
                0
                if unit.grouped
                else RowDecoder.num_parameters(code, row_size, config.ae_decoder_widths)
            )
        )
        info = _member_info(
            t, "decoded_embedding" if is_emb else "decoded_linear", code, own, flops, approx, stats
        )
        info["decode_flops"] = module.decode_flops()
        info["transposed"] = transposed
        infos.append(info)
        modules.append(module)
        offset += n
    stored = budget.autoencoder_stored(total, row_size, code, config.ae_decoder_widths)
    info = {
        "name": unit.name,
        "type": unit.type,
        "method": config.method,
        "members": infos,
        "layers": [t.block for t in members],
        "rows": rows,
        "row_size": row_size,
        "code_size": code,
        "target_ratio": unit.ratio,
        "original_weights": int(stacked.numel()),
        "stored": stored,
        "shared": RowDecoder.num_parameters(code, row_size, config.ae_decoder_widths),
        "training": {
            "steps": config.ae_steps,
            "seconds": result.seconds,
            "first_loss": result.history[0]["loss"],
            "last_loss": result.history[-1]["loss"],
        },
    }
    return modules, info
