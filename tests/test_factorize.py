"""Offline compression (methods/factorize) on tiny random models: math, budget, modules, I/O."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from safetensors import safe_open

from gearshift.errors import ArtifactError, ConfigError
from gearshift.measure import count_flops, count_parameters
from gearshift.methods.factorize import (
    METHODS,
    DecodedLinear,
    FactorizeConfig,
    LowRankLinear,
    autoencoder_stored,
    code_size,
    compress,
    densify,
    is_factorized_folder,
    load_factorized,
    low_rank_factors,
    low_rank_size,
    low_rank_stored,
    save_factorized,
    whitening_from_gram,
)
from gearshift.methods.factorize.autoencoder import (
    OutputWeighting,
    gram_factor,
    train_row_autoencoder,
)
from gearshift.methods.factorize.modules import COMPRESSED_TYPES
from gearshift.methods.factorize.svd import row_weights_from_importance
from gearshift.runtime import BlockShape, ModelConfig, Transformer, load_pretrained, save_model
from gearshift.runtime.io import load_model

LINEARS = ["attn.q", "attn.k", "attn.v", "attn.o", "ffn.inp", "ffn.out"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is faster than two fighting over a busy CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_config(**kw) -> ModelConfig:
    base = dict(
        family="bert",
        vocab_size=60,
        hidden_size=32,
        num_layers=3,
        head_dim=8,
        blocks=[BlockShape(4, 64) for _ in range(3)],
        layer_to_block=[0, 1, 2],
        max_positions=32,
        type_vocab_size=2,
        head={"kind": "classification", "num_labels": 2},
    )
    base.update(kw)
    return ModelConfig(**base)


def small_model(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(small_config(**kw)).eval()


def batches(n: int = 3, seed: int = 1, labels: bool = True) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 60, (4, 10), generator=g)
        mask = torch.ones_like(ids)
        mask[1:, 7:] = 0
        b = {"input_ids": ids * mask, "attention_mask": mask}
        if labels:
            b["labels"] = torch.randint(0, 2, (4,), generator=g)
        out.append(b)
    return out


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def fast(method: str, **kw) -> FactorizeConfig:
    kw.setdefault("ratio", 2.0)
    return FactorizeConfig(method=method, ae_steps=kw.pop("ae_steps", 30), progress=False, **kw)


# ---------------------------------------------------------------------- SVD family
@pytest.mark.parametrize("shape", [(12, 8), (8, 12)])
def test_svd_at_full_rank_reproduces_the_weight(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape)
    u, v = low_rank_factors(w, 8)
    assert u.shape == (shape[0], 8) and v.shape == (8, shape[1])
    assert torch.allclose(u @ v, w, atol=1e-5)


@pytest.mark.parametrize("shape", [(20, 10), (10, 20)])
def test_svd_error_decreases_with_rank_and_equals_dropped_singular_values(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape)
    s = torch.linalg.svdvals(w.double())
    errors = []
    for r in range(1, 11):
        u, v = low_rank_factors(w, r)
        err = float((w - u @ v).double().norm())
        assert err == pytest.approx(float(s[r:].pow(2).sum().sqrt()), abs=1e-4)
        errors.append(err)
    assert all(a > b for a, b in zip(errors, errors[1:]))


def correlated_inputs(tokens: int = 400, m: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(tokens, m, generator=g)
    mix = torch.randn(m, m, generator=g) * torch.logspace(0, -3, m).unsqueeze(
        1
    )  # few strong directions
    return z @ mix


def test_whitened_svd_has_lower_output_error_than_svd_on_correlated_inputs():
    torch.manual_seed(0)
    x = correlated_inputs()
    w = torch.randn(24, 16)
    gram = x.double().t() @ x.double()
    wh = whitening_from_gram(gram)
    assert wh.how == "cholesky"
    for rank in (2, 4, 8):
        u, v = low_rank_factors(w, rank)
        uw, vw = low_rank_factors(w, rank, whitening=wh)
        plain = float((x @ (w - u @ v).t()).norm())
        white = float((x @ (w - uw @ vw).t()).norm())
        assert white < 0.7 * plain
        # and it is the optimum: the dropped singular values of W S
        s = torch.linalg.svdvals(w.double() @ wh.factor)
        assert white == pytest.approx(float(s[rank:].pow(2).sum().sqrt()), rel=1e-3)


def test_fwsvd_with_uniform_weights_equals_svd():
    torch.manual_seed(0)
    w = torch.randn(15, 9)
    u, v = low_rank_factors(w, 4)
    for c in (1.0, 3.7):
        uf, vf = low_rank_factors(w, 4, row_weights=torch.full((15,), c))
        assert torch.allclose(uf @ vf, u @ v, atol=1e-5)
    imp = torch.full((15,), 0.25)
    assert torch.allclose(
        row_weights_from_importance(imp, 0.1), torch.ones(15, dtype=torch.float64)
    )


def test_fwsvd_row_weights_protect_important_rows():
    torch.manual_seed(0)
    w = torch.randn(15, 9)
    weights = torch.ones(15)
    weights[:3] = 10.0
    u, v = low_rank_factors(w, 3)
    uf, vf = low_rank_factors(w, 3, row_weights=weights)
    assert (w - uf @ vf)[:3].norm() < 0.5 * (w - u @ v)[:3].norm()


@pytest.mark.parametrize("kind", ["rank_deficient", "zero_column", "indefinite"])
def test_non_positive_definite_gram_does_not_crash(kind, caplog):
    torch.manual_seed(0)
    m = 12
    if kind == "rank_deficient":
        x = torch.randn(5, m)  # fewer tokens than inputs
        gram = x.t() @ x
    elif kind == "zero_column":
        x = torch.randn(50, m)
        x[:, 3] = 0
        gram = x.t() @ x
    else:
        gram = torch.diag(torch.linspace(-0.5, 1, m))  # a negative eigenvalue
    with caplog.at_level(logging.INFO, logger="gearshift.factorize"):
        wh = whitening_from_gram(gram, name="blocks.0.attn.q")
    assert wh.how != "cholesky"
    assert "blocks.0.attn.q" in caplog.text
    assert "not positive definite" in caplog.text or "eigendecomposition" in caplog.text
    assert torch.allclose(wh.factor @ wh.inverse, torch.eye(m, dtype=torch.float64), atol=1e-6)
    u, v = low_rank_factors(torch.randn(8, m), 3, whitening=wh)
    assert torch.isfinite(u).all() and torch.isfinite(v).all()


def test_whitening_of_zero_inputs_falls_back_to_plain_svd(caplog):
    with caplog.at_level(logging.WARNING, logger="gearshift.factorize"):
        wh = whitening_from_gram(torch.zeros(6, 6), name="unused")
    assert "whitening skipped" in caplog.text
    assert torch.equal(wh.factor, torch.eye(6, dtype=torch.float64))


# ---------------------------------------------------------------------- budget
@pytest.mark.parametrize("shape", [(384, 384), (1536, 384), (30522, 384), (64, 32)])
@pytest.mark.parametrize("ratio", [2.0, 4.0, 10.0])
def test_budget_solver_hits_the_target_within_rounding(shape, ratio):
    n, m = shape
    budget = n * m / ratio
    r = low_rank_size([n], m, ratio)
    assert r == math.floor(n * m / (ratio * (n + m)))  # the paper's SVD rank
    assert low_rank_stored([n], m, r) <= budget < low_rank_stored([n], m, r + 1)
    d = code_size(n, m, ratio) if autoencoder_stored(n, m, 1) <= budget else None
    if d is not None:
        assert autoencoder_stored(n, m, d) <= budget < autoencoder_stored(n, m, d + 1)
    # grouped: one basis for six layers, coefficients per layer
    k = low_rank_size([n] * 6, m, ratio)
    assert low_rank_stored([n] * 6, m, k) <= 6 * budget < low_rank_stored([n] * 6, m, k + 1)
    assert k >= r


def test_autoencoder_budget_that_cannot_be_met_says_what_to_do():
    with pytest.raises(ConfigError, match="grouped"):
        code_size(8, 8, 10.0)


@pytest.mark.parametrize("method", ["svd", "ae"])
@pytest.mark.parametrize("grouped", [False, True])
def test_compress_reaches_the_target_ratio_and_counts_parameters_truthfully(method, grouped):
    model = small_model()
    before = count_parameters(model)
    cfg = fast(method, ratio=3.0, grouped=grouped, modules=LINEARS)
    model, report = compress(model, cfg)
    assert report.achieved_ratio >= 3.0
    if method == "svd":
        assert report.achieved_ratio < 3.0 * 1.25
    assert report.params_before == before
    assert report.params_after == count_parameters(model)
    # Exactly the compressed matrices changed: biases, norms, head and embeddings kept.
    assert report.params_after == before - report.original_weights + report.stored
    for unit in report.units:  # each unit's size is the largest that fits: within rounding
        rows, m = unit["rows"], unit["row_size"]
        budget = unit["original_weights"] / 3.0
        if method == "svd":
            assert unit["stored"] <= budget < low_rank_stored(rows, m, unit["rank"] + 1)
        else:
            assert (
                unit["stored"] <= budget < autoencoder_stored(sum(rows), m, unit["code_size"] + 1)
            )


def test_per_module_ratios_override_the_global_ratio():
    model = small_model()
    cfg = fast("svd", ratio=2.0, module_ratios={"ffn.inp": 8.0}, modules=LINEARS)
    _, report = compress(model, cfg)
    by_type = {}
    for u in report.units:
        by_type.setdefault(u["type"], []).append(u["original_weights"] / u["stored"])
    assert all(r >= 8.0 for r in by_type["ffn.inp"])
    assert all(2.0 <= r < 4.0 for r in by_type["attn.q"])


# ---------------------------------------------------------------------- grouped mode
def test_grouped_svd_shares_one_basis_tensor_and_saves_it_once(tmp_path):
    model = small_model()
    cfg = fast("svd", grouped=True, modules=["attn.k", "ffn.inp"])
    model, report = compress(model, cfg)
    ks = [model.blocks[i].attn.k for i in range(3)]
    assert all(isinstance(k, LowRankLinear) for k in ks)
    assert ks[0].basis is ks[1].basis is ks[2].basis
    assert ks[0].coefficients is not ks[1].coefficients
    assert {u["name"] for u in report.units} == {"attn.k@0-2", "ffn.inp@0-2"}
    batch = batches()[0]
    out = logits(model, batch)
    save_factorized(model, tmp_path / "g", cfg)
    with safe_open(str(tmp_path / "g" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert sum(k.endswith("attn.k.basis.weight") for k in keys) == 1
    assert sum(k.endswith("attn.k.coefficients.weight") for k in keys) == 3
    forms = json.loads((tmp_path / "g" / "gearshift.json").read_text())["config"]["forms"]
    assert [p for p, f in forms.items() if f.get("shared") == "attn.k@0-2"] == [
        f"blocks.{i}.attn.k" for i in range(3)
    ]
    again = load_factorized(tmp_path / "g")
    assert again.blocks[0].attn.k.basis is again.blocks[2].attn.k.basis
    assert torch.equal(logits(again, batch), out)


def test_grouped_layers_and_group_size_are_configurable():
    model = small_model()
    cfg = fast(
        "svd", grouped=True, group_size=2, modules=["attn.q", "attn.v"], group_modules=["attn.q"]
    )
    model, report = compress(model, cfg)
    names = [u["name"] for u in report.units]
    assert "attn.q@0-1" in names and "blocks.2.attn.q" in names  # groups of 2 consecutive blocks
    assert all(not n.startswith("attn.v@") for n in names)  # attn.v not grouped
    assert model.blocks[0].attn.q.basis is model.blocks[1].attn.q.basis
    assert model.blocks[2].attn.q.basis is not model.blocks[1].attn.q.basis


def test_grouped_autoencoder_shares_one_decoder_and_saves_it_once(tmp_path):
    model = small_model()
    cfg = fast("ae", grouped=True, modules=["attn.v"])
    model, report = compress(model, cfg)
    vs = [model.blocks[i].attn.v for i in range(3)]
    assert all(isinstance(v, DecodedLinear) for v in vs)
    assert vs[0].decoder is vs[1].decoder is vs[2].decoder
    unit = report.units[0]
    # the decoder counted once: codes and norms per row, plus one decoder
    assert unit["stored"] == autoencoder_stored(3 * 32, 32, unit["code_size"])
    save_factorized(model, tmp_path / "a", cfg)
    with safe_open(str(tmp_path / "a" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert sum(".decoder.net.0.weight" in k for k in keys) == 1
    again = load_factorized(tmp_path / "a")
    assert again.blocks[0].attn.v.decoder is again.blocks[1].attn.v.decoder
    batch = batches()[0]
    assert torch.equal(logits(again, batch), logits(model, batch))


# ---------------------------------------------------------------------- autoencoder
def test_autoencoder_reconstruction_improves_and_norms_are_restored_exactly():
    torch.manual_seed(0)
    rows = torch.randn(200, 6) @ torch.randn(6, 24) * 0.05  # rows on a low-dimensional subspace
    cfg = FactorizeConfig(method="ae", ae_steps=300, ae_batch_rows=64, progress=False)
    result = train_row_autoencoder(rows, 6, cfg)
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]
    rebuilt = result.reconstruct()
    assert torch.allclose(rebuilt.norm(dim=1), rows.norm(dim=1), rtol=1e-5)
    cos = torch.nn.functional.cosine_similarity(rebuilt, rows, dim=1)
    assert float(cos.mean()) > 0.8


def test_activation_weighted_autoencoder_lowers_output_error():
    torch.manual_seed(0)
    x = correlated_inputs(m=24)
    rows = torch.randn(120, 24) * 0.05
    gram = x.double().t() @ x.double()
    cfg = FactorizeConfig(method="ae-act", ae_steps=300, ae_batch_rows=64, progress=False)

    def out_err(result):
        e = (result.reconstruct() - rows).double()
        return float(((e @ gram) * e).sum() / ((rows.double() @ gram) * rows.double()).sum())

    plain = train_row_autoencoder(rows, 4, cfg)
    weighting = OutputWeighting(factors=[(0, 120, gram_factor(gram, rows))])
    act = train_row_autoencoder(rows, 4, cfg, weighting=weighting)
    assert out_err(act) < 0.8 * out_err(plain)


def test_decoded_linear_trains_its_codes_and_its_cache_follows_the_parameters():
    model = small_model()
    model, _ = compress(model, fast("ae", modules=["attn.q"]))
    q = model.blocks[0].attn.q
    batch = batches()[0]
    before = logits(model, batch)
    model.train()
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    )
    out.loss.backward()
    assert q.codes.grad is not None and q.decoder.net[0].weight.grad is not None
    with torch.no_grad():
        q.codes.add_(0.5)
    model.eval()
    assert not torch.equal(logits(model, batch), before)  # the cached weight was rebuilt


# ---------------------------------------------------------------------- FLOPs and storage
def test_low_rank_linear_saves_flops_and_decoded_linear_does_not():
    dense = small_model()
    batch = batches()[0]
    dense_flops = count_flops(dense, batch)
    low, report = compress(small_model(), fast("svd", ratio=3.0, modules=LINEARS))
    decoded, _ = compress(small_model(), fast("ae", ratio=3.0, modules=LINEARS))
    low_flops, dec_flops = count_flops(low, batch), count_flops(decoded, batch)
    assert low_flops < dense_flops
    assert dec_flops == dense_flops
    tokens = batch["input_ids"].numel()
    saved = report.flops_per_token_before - report.flops_per_token_after
    assert dense_flops - low_flops == tokens * saved  # the report's per-token count is exact
    assert count_parameters(decoded) < count_parameters(dense)


def test_low_rank_embedding_costs_its_projection_and_decoded_embedding_nothing():
    batch = batches()[0]
    dense_flops = count_flops(small_model(), batch)
    low, report = compress(small_model(), fast("svd", modules=["embeddings.word"]))
    decoded, _ = compress(small_model(), fast("ae", ratio=1.5, modules=["embeddings.word"]))
    rank = report.modules[0]["rank"]
    tokens = batch["input_ids"].numel()
    assert count_flops(low, batch) == dense_flops + tokens * 2 * rank * 32
    assert report.flops_per_token_after == 2 * rank * 32
    assert count_flops(decoded, batch) == dense_flops


# ---------------------------------------------------------------------- save / load
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("grouped", [False, True])
def test_save_and_reload_give_identical_outputs(method, grouped, tmp_path):
    model = small_model()
    cal = batches()
    cfg = fast(method, grouped=grouped)
    model, report = compress(model, cfg, cal if cfg.needs_gram or cfg.needs_fisher else None)
    assert report.achieved_ratio >= 2.0
    batch = cal[0]
    out = logits(model, batch)
    folder = save_factorized(model, tmp_path / "m", extra={"task": {"name": "sst2"}})
    assert is_factorized_folder(folder)
    meta = json.loads((folder / "gearshift.json").read_text())
    assert meta["kind"] == "model" and meta["factorize"]["method"] == method
    assert meta["task"] == {"name": "sst2"}
    assert meta["config"]["forms"]["blocks.0.attn.q"]["form"] in ("low-rank", "decoded")
    again = load_factorized(folder)
    assert again.factorize_config.method == method
    assert torch.equal(logits(again, batch), out)
    assert count_parameters(again) == count_parameters(model)
    generic = load_pretrained(str(folder))  # the generic loader dispatches on the folder kind
    assert torch.equal(logits(generic, batch), out)
    assert count_parameters(generic) == count_parameters(model)


@pytest.mark.parametrize("method", ["svd", "ae"])
@pytest.mark.parametrize("grouped", [False, True])
def test_densify_keeps_the_function_and_stores_plain_weights(method, grouped, tmp_path):
    """densify: every compressed module becomes a plain Linear / Embedding with its rebuilt
    weight; same outputs, the uncompressed model's parameter count, a plain model folder."""
    original = small_model()
    model, _ = compress(small_model(), fast(method, grouped=grouped))
    batch = batches()[0]
    out = logits(model, batch)
    dense = densify(model)
    assert not any(isinstance(m, COMPRESSED_TYPES) for m in dense.modules())
    assert isinstance(dense.embeddings.word, torch.nn.Embedding)
    assert not hasattr(dense, "factorize_config")
    assert count_parameters(dense) == count_parameters(original)
    assert torch.allclose(logits(dense, batch), out, atol=1e-5)
    folder = save_model(dense, tmp_path / "dense")
    assert not is_factorized_folder(folder)
    assert torch.allclose(logits(load_pretrained(str(folder)), batch), out, atol=1e-5)
    # a model in another dtype keeps it: the plain modules are built in the weights' dtype
    double, _ = compress(small_model(), fast(method, grouped=grouped))
    double = densify(double.to(torch.float64))
    assert {p.dtype for p in double.parameters()} == {torch.float64}


def test_generic_loader_names_folders_it_cannot_load(tmp_path):
    model, _ = compress(small_model(), fast("svd", modules=["attn.q"]))
    folder = save_factorized(model, tmp_path / "f")
    meta = json.loads((folder / "gearshift.json").read_text())
    meta["kind"] = "pruned-model-v9"
    (folder / "gearshift.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="'pruned-model-v9' folder.*upgrade gearshift"):
        load_pretrained(str(folder))
    meta["kind"] = "plugin"
    (folder / "gearshift.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="compression plugin, not a model.*load_plugin"):
        load_model(folder)


def test_loading_wrong_or_damaged_folders_raises_clear_errors(tmp_path):
    plain = small_model()
    save_model(plain, tmp_path / "plain")
    with pytest.raises(ArtifactError, match="load a plain model"):
        load_factorized(tmp_path / "plain")
    with pytest.raises(ArtifactError, match="not a gearshift folder"):
        load_factorized(tmp_path)

    model, _ = compress(small_model(), fast("svd", modules=["attn.q"]))
    folder = save_factorized(model, tmp_path / "f")
    (folder / "model.safetensors").rename(folder / "moved.safetensors")
    with pytest.raises(ArtifactError, match="model.safetensors is missing"):
        load_factorized(folder)
    (folder / "moved.safetensors").rename(folder / "model.safetensors")

    meta = json.loads((folder / "gearshift.json").read_text())
    forms = meta["config"]["forms"]
    forms["blocks.0.attn.q"]["rank"] += 1
    (folder / "gearshift.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="blocks.0.attn.q.*shape"):
        load_factorized(folder)

    forms["blocks.0.attn.q"]["rank"] -= 1
    forms["blocks.7.attn.q"] = forms["blocks.0.attn.q"]
    (folder / "gearshift.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="blocks.7.attn.q"):
        load_factorized(folder)

    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    del forms["blocks.7.attn.q"]
    (folder / "gearshift.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="cannot be read"):
        load_factorized(folder)


# ---------------------------------------------------------------------- config and calibration
def test_config_round_trips_and_drops_unknown_keys(caplog):
    cfg = FactorizeConfig(method="ae-act", ratio=10, grouped=True, module_ratios={"ffn.out": 4.0})
    assert FactorizeConfig.from_json(cfg.to_json()) == cfg
    data = cfg.to_dict() | {"from_the_future": 1}
    with caplog.at_level(logging.WARNING):
        again = FactorizeConfig.from_dict(data)
    assert again == cfg and "from_the_future" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "pca"}, "method 'pca' unknown"),
        ({"ratio": 1.0}, "ratio"),
        ({"modules": ["attn.x"]}, "attn.x"),
        ({"module_ratios": {"ffn.out": 0.5}}, "> 1"),
        ({"group_modules": ["embeddings.word"]}, "only Linear types"),
    ],
)
def test_invalid_configs_name_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FactorizeConfig(**kwargs)


def test_calibration_methods_refuse_to_run_without_data():
    with pytest.raises(ConfigError, match="needs calibration data"):
        compress(small_model(), fast("svdllm"))


@pytest.mark.parametrize("method", ["svdllm", "fwsvd", "ae-act"])
def test_statistics_collected_once_give_the_same_compression(method):
    from gearshift.methods.factorize import calibrate

    cal = batches(4)
    config = fast(method, modules=LINEARS + ["embeddings.word"], ae_steps=5)
    stats = calibrate(small_model(), config, cal, fisher=True)
    assert stats.gram_seconds > 0 and stats.fisher_seconds > 0
    own, own_report = compress(small_model(), config, cal)
    reused, report = compress(small_model(), config, stats=stats)
    x = batches(1, seed=7)[0]
    assert torch.equal(logits(own, x), logits(reused, x))
    assert [m["output_error"] for m in report.modules] == [
        m["output_error"] for m in own_report.modules
    ]
    needed = stats.seconds_for(config.needs_gram, config.needs_fisher)
    assert report.calibration_seconds == needed and report.seconds >= needed
    assert any("collected once and reused" in n for n in report.notes)


def test_statistics_that_miss_what_the_method_reads_are_refused():
    from gearshift.methods.factorize import calibrate

    cal = batches(2)
    grams_only = calibrate(small_model(), fast("svdllm", modules=["attn.q"]), cal)
    with pytest.raises(
        ConfigError, match=r"do not cover Fisher of blocks\.0\.attn\.q.*fisher=True"
    ):
        compress(small_model(), fast("fwsvd", modules=["attn.q"]), stats=grams_only)
    with pytest.raises(ConfigError, match=r"do not cover blocks\.0\.attn\.k"):
        compress(small_model(), fast("svdllm", modules=["attn.k"]), stats=grams_only)


def test_fisher_without_labels_samples_them_and_without_head_refuses():
    model = small_model()
    model, report = compress(model, fast("fwsvd", modules=["attn.q"]), batches(labels=False))
    assert report.units[0]["method"] == "fisher-weighted svd"
    headless = small_model(head={"kind": None})
    with pytest.raises(ConfigError, match="no task head"):
        compress(headless, fast("fwsvd"), batches(labels=False))


def test_svdllm_has_lower_output_error_than_svd_on_a_model():
    from gearshift.methods.factorize import collect_statistics
    from gearshift.methods.factorize.calibration import relative_output_error

    cal = batches(6)
    original = small_model()
    linears = {
        f"blocks.{b}.{t}": original.get_submodule(f"blocks.{b}.{t}")
        for b in range(3)
        for t in LINEARS
    }
    stats = collect_statistics(original, cal, linears, progress=False)
    _, white = compress(small_model(), fast("svdllm", ratio=4.0, modules=LINEARS), cal)
    plain_model, _ = compress(small_model(), fast("svd", ratio=4.0, modules=LINEARS))
    white_err = sum(m["output_error"] for m in white.modules)
    plain_err = sum(
        relative_output_error(
            linears[n].weight.detach(), plain_model.get_submodule(n).weight.detach(), stats.grams[n]
        )
        for n in linears
    )
    assert white_err < plain_err


def test_pruned_blocks_are_skipped_or_grouped_by_shape():
    model = small_model(blocks=[BlockShape(4, 64), BlockShape(2, 16), BlockShape(0, 0)])
    cfg = fast("svd", grouped=True, modules=LINEARS)
    model, report = compress(model, cfg)
    names = {m["name"] for m in report.modules}
    assert "blocks.2.attn.q" not in names and "blocks.2.ffn.inp" not in names  # zero-size
    assert all(
        not n.startswith("attn.q@") for n in (u["name"] for u in report.units)
    )  # shapes differ
    with torch.no_grad():
        model(torch.randint(1, 60, (2, 5)))


def test_refining_the_codes_lowers_the_loss():
    torch.manual_seed(0)
    rows = torch.randn(150, 4) @ torch.randn(4, 20) * 0.05 + 0.01 * torch.randn(150, 20)
    cfg = FactorizeConfig(method="ae", ae_steps=150, ae_batch_rows=64, progress=False)
    plain = train_row_autoencoder(rows, 3, cfg)
    refined = train_row_autoencoder(
        rows, 3, FactorizeConfig(**{**cfg.to_dict(), "ae_refine_steps": 150})
    )
    assert refined.history[-1]["step"] == 300

    def err(r):
        return float((r.reconstruct() - rows).norm())

    assert err(refined) < err(plain)


def test_the_training_loop_fine_tunes_and_resumes_a_grouped_autoencoder_model(tmp_path):
    from gearshift.train import TrainConfig, Trainer

    model, _ = compress(small_model(), fast("ae", grouped=True, modules=["attn.q", "ffn.inp"]))
    g = torch.Generator().manual_seed(0)
    features = [
        {
            "input_ids": torch.randint(1, 60, (8,), generator=g),
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": torch.tensor(i % 2),
        }
        for i in range(8)
    ]
    codes_before = model.blocks[0].attn.q.codes.detach().clone()
    decoder_before = model.blocks[0].attn.q.decoder.net[0].weight.detach().clone()
    cfg = TrainConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        batch_size=4,
        save_every=1,
        learning_rate=1e-2,
        progress=False,
    )
    Trainer(model, features, cfg).fit()
    assert not torch.equal(model.blocks[0].attn.q.codes.detach(), codes_before)
    assert not torch.equal(model.blocks[0].attn.q.decoder.net[0].weight.detach(), decoder_before)
    assert model.blocks[0].attn.q.decoder is model.blocks[2].attn.q.decoder  # still shared
    # a fresh copy resumes from the checkpoint (shared decoder tensors saved once)
    again, _ = compress(small_model(), fast("ae", grouped=True, modules=["attn.q", "ffn.inp"]))
    cfg3 = TrainConfig(**{**cfg.to_dict(), "max_steps": 3})
    with pytest.raises(ConfigError):  # total steps differ: refused, as for any run
        Trainer(again, features, cfg3).fit(resume=True)
    Trainer(again, features, cfg).fit(resume=True)
    assert torch.equal(again.blocks[1].attn.q.codes, model.blocks[1].attn.q.codes)


def test_compressed_parameters_can_take_their_own_learning_rate(tmp_path):
    """compressed_lr_groups: codes, norms and the shared decoder (once) at their own rate;
    exact biases, LayerNorms and the head at the config's; the Trainer uses both."""
    from gearshift.methods.factorize.finetune import compressed_lr_groups
    from gearshift.train import TrainConfig, Trainer

    model, _ = compress(small_model(), fast("ae", grouped=True, modules=["attn.q", "ffn.inp"]))
    fast_group, rest = compressed_lr_groups(model, 1e-2)
    q0, q1 = model.blocks[0].attn.q, model.blocks[1].attn.q
    ids = {id(p) for p in fast_group["params"]}
    assert fast_group["lr"] == 1e-2 and "lr" not in rest
    assert len(ids) == len(fast_group["params"])  # the shared decoder once
    assert {id(q0.codes), id(q1.codes), id(q0.norms), id(q0.decoder.net[0].weight)} <= ids
    assert id(q0.bias) not in ids and any(p is q0.bias for p in rest["params"])
    everything = [p for p in model.parameters() if p.requires_grad]
    assert len(ids) + len(rest["params"]) == len(everything)
    features = [
        {
            "input_ids": torch.randint(1, 60, (8,)),
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": torch.tensor(i % 2),
        }
        for i in range(4)
    ]
    cfg = TrainConfig(output_dir=str(tmp_path / "r"), max_steps=1, batch_size=4, progress=False)
    trainer = Trainer(model, features, cfg, trainable_params=lambda m: compressed_lr_groups(m, 0.5))
    trainer.fit()
    rates = {g["initial_lr"] for g in trainer.optimizer.param_groups if g["params"]}
    assert rates == {0.5, cfg.learning_rate}
