"""Model edits (factorize, slim widths and word rank, int8, and their combinations) on tiny
random models of every family: each runs, saves and reloads as a plain model folder with
identical outputs, and its counted FLOPs equal the analytic count of its config."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import FAMILIES, random_batch
from safetensors import safe_open
from safetensors.torch import load_file

from gearshift.errors import ArtifactError, ConfigError
from gearshift.measure import count_parameters, parameter_bytes
from gearshift.measure.flops import analytic_flops, count_flops, fixed_length_batch
from gearshift.methods.factorize import FactorizeConfig, compress, load_factorized
from gearshift.methods.factorize.config import LINEAR_TYPES
from gearshift.methods.quantize import QuantizeConfig, quantize
from gearshift.methods.slim.prune import factorize_word_embedding, prune
from gearshift.runtime import (
    ModelConfig,
    Transformer,
    load_model,
    load_pretrained,
    quantize_int8,
    save_model,
)
from gearshift.runtime.edits import record_forms
from gearshift.runtime.forms import (
    DecodedEmbedding,
    LowRankEmbedding,
    LowRankLinear,
    replace_module,
)
from gearshift.runtime.quant import Int8Linear

LEGACY = Path(__file__).parent / "data" / "legacy"
# int8 against float32 (same edits otherwise): the largest logit difference is at most this
# share of the largest float logit, and the hidden states' relative (Frobenius) error too.
# Measured on these models: at most 0.7% (GPT-2), 0.03% elsewhere.
INT8_TOLERANCE = 0.02


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base_models(hf_tiny_dir):
    """One loaded tiny classifier per family, copied by each test."""
    cache: dict[str, torch.nn.Module] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_pretrained(str(hf_tiny_dir(family, "classification")))
        return copy.deepcopy(cache[family]).eval()

    return get


# ---------------------------------------------------------------------- the edits
def factorize(model):
    """SVD at ratio 2 of every Linear and the word embedding; attn.k with one shared basis."""
    cfg = FactorizeConfig(
        method="svd", ratio=2.0, grouped=True, group_modules=["attn.k"], progress=False
    )
    if model.config.word_rank:  # already low rank (slim): the Linears only
        cfg.modules = list(LINEAR_TYPES)
    compress(model, cfg)
    return model


def slim(model):
    """Per-layer widths (one layer with no heads, one with no FFN neurons) and word rank 5."""
    L = model.config.num_layers
    heads = [[0, 2], [], [1, 2, 3]][:L]
    neurons = [list(range(20)), list(range(0, 48, 3)), []][:L]
    return factorize_word_embedding(prune(model, heads, neurons), 5).eval()


def int8(model):
    return quantize_int8(model)


EDITS = {
    "factorize": [factorize],
    "slim": [slim],
    "int8": [int8],
    "factorize+int8": [factorize, int8],
    "slim+int8": [slim, int8],
    "slim+factorize": [slim, factorize],
}


def applies(family: str, edit: str) -> bool:
    """Slim prunes one block per layer: ALBERT's shared blocks cannot be pruned."""
    return not (family == "albert" and "slim" in edit)


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("family", FAMILIES)
def test_edit_runs_round_trips_and_counts_its_flops(family, edit, base_models, tmp_path):
    model = base_models(family)
    if not applies(family, edit):
        with pytest.raises(ConfigError, match="unshared layers"):
            for step in EDITS[edit]:
                model = step(model)
        return
    for step in EDITS[edit]:
        model = step(model)
    batch = random_batch(family)
    out = logits(model, batch)
    assert out.shape[0] == 3 and torch.isfinite(out).all()
    forms = model.config.forms
    shared_basis = edit in ("factorize", "factorize+int8")  # slim's widths differ per layer
    if "factorize" in edit:
        assert any(f["form"] == "low-rank" for f in forms.values())
    if shared_basis:
        assert forms["blocks.0.attn.k"]["shared"].startswith("attn.k@0-")
    if "int8" in edit:
        assert any(f["form"] == "int8" for f in forms.values())
    if "factorize" in edit and "int8" in edit:  # the low-rank factors are the int8 Linears
        assert isinstance(model.blocks[0].attn.q, LowRankLinear)
        assert isinstance(model.blocks[0].attn.q.coefficients, Int8Linear)
        assert model.blocks[0].attn.k.basis is model.blocks[1].attn.k.basis

    folder = save_model(model, tmp_path / "m")
    meta = json.loads((folder / "gearshift.json").read_text())
    assert meta["kind"] == "model" and meta["config"]["forms"] == forms
    again = load_model(folder)
    assert torch.equal(logits(again, batch), out)
    assert again.config.forms == forms and again.config.word_rank == model.config.word_rank
    assert count_parameters(again) == count_parameters(model)
    assert parameter_bytes(again) == parameter_bytes(model)
    if shared_basis:  # stored once
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            keys = list(f.keys())
        assert sum(k.endswith(".attn.k.basis.weight") for k in keys) == 1

    n = 12
    fixed = fixed_length_batch(model.config, n, batch=2)
    expected = analytic_flops(model.config, n, batch=2)
    assert count_flops(model, fixed) == expected
    assert count_flops(again, fixed) == expected
    if edit != "int8":  # edits that change the arithmetic count less than the dense model
        assert expected < analytic_flops(base_models(family).config, n, batch=2)


@pytest.mark.parametrize("edit", ["factorize+int8", "slim+int8"])
def test_tied_lm_head_over_an_edited_word_embedding(edit, hf_tiny_dir, tmp_path):
    """GPT-2 with its LM head tied to a low-rank word embedding: the head runs (h P) C^T,
    counted as such, and the edited model round-trips."""
    model = load_pretrained(str(hf_tiny_dir("gpt2", None)), head_kind="lm").eval()
    assert model.config.tie_word_embeddings and model.lm_head is None
    for step in EDITS[edit]:
        model = step(model)
    assert isinstance(model.embeddings.word, LowRankEmbedding)
    batch = random_batch("gpt2")
    out = logits(model, batch)
    assert out.shape == (3, 11, 99)
    assert torch.equal(logits(load_model(save_model(model, tmp_path / "lm")), batch), out)
    fixed = fixed_length_batch(model.config, 10)
    assert count_flops(model, fixed) == analytic_flops(model.config, 10)


INT8_CASES = [
    (family, edit)
    for family in FAMILIES
    for edit in ("int8", "factorize+int8", "slim+int8")
    if applies(family, edit)  # the refusals are tested above
]


@pytest.mark.parametrize(("family", "edit"), INT8_CASES)
def test_int8_is_close_to_float32_at_one_and_two_threads(family, edit, base_models):
    model = base_models(family)
    for step in EDITS[edit][:-1]:
        model = step(model)
    batch = random_batch(family)
    with torch.no_grad():
        ref = model(**batch)
    q = int8(copy.deepcopy(model))
    assert any(isinstance(m, Int8Linear) for m in q.modules())
    with torch.no_grad():
        one = q(**batch)
        torch.set_num_threads(2)
        two = q(**batch)
    assert not torch.equal(one.logits, ref.logits)  # int8 did change the arithmetic
    # int8 sums are exact integers: the thread split does not change any bit
    assert torch.equal(one.logits, two.logits)
    scale = float(ref.logits.abs().max())
    assert float((one.logits - ref.logits).abs().max()) <= INT8_TOLERANCE * scale
    h, h_ref = one.last_hidden_state, ref.last_hidden_state
    assert float((h - h_ref).norm() / h_ref.norm()) <= INT8_TOLERANCE
    assert count_parameters(q) == count_parameters(model)
    # 1 byte a weight, plus a float scale and an int zero point per output row
    saved = sum(3 * m.in_features * m.out_features - 16 * m.out_features for m in q.modules()
                if isinstance(m, Int8Linear))  # fmt: skip
    assert parameter_bytes(q) == parameter_bytes(model) - saved


def test_int8_per_tensor_saves_one_scale_and_reloads_bitwise(base_models, tmp_path):
    model = quantize(base_models("bert"), QuantizeConfig(qscheme="per-tensor"))
    assert model.config.forms["blocks.0.ffn.inp"] == {"form": "int8", "qscheme": "per-tensor"}
    batch = random_batch("bert")
    folder = save_model(model, tmp_path / "q")
    state = load_file(str(folder / "model.safetensors"))
    assert state["blocks.0.ffn.inp.weight"].dtype == torch.int8
    assert state["blocks.0.ffn.inp.weight_scale"].shape == ()
    assert torch.equal(logits(load_model(folder), batch), logits(model, batch))
    per_channel = save_model(int8(base_models("bert")), tmp_path / "c")
    state = load_file(str(per_channel / "model.safetensors"))
    assert state["blocks.0.ffn.inp.weight_scale"].shape == (48,)
    assert state["blocks.0.ffn.inp.weight_zero_point"].dtype == torch.int64


def test_int8_of_chosen_modules_only(base_models):
    model = factorize(base_models("bert"))
    quantize_int8(model, ["blocks.0.attn.q", "blocks.1.ffn.out", "blocks.0.attn.k"])
    forms = model.config.forms
    assert forms["blocks.0.attn.q.basis"]["form"] == "int8"
    assert forms["blocks.0.attn.q.coefficients"]["form"] == "int8"
    # the basis shared by attn.k is one module: int8 under every member
    assert {p for p in forms if p.endswith("attn.k.basis")} == {
        f"blocks.{i}.attn.k.basis" for i in range(3)
    }
    assert "blocks.2.ffn.out.basis" not in forms and "blocks.1.attn.q.basis" not in forms


# ---------------------------------------------------------------------- refusals
def test_edits_that_cannot_apply_say_why(base_models):
    quantized = int8(base_models("bert"))
    with pytest.raises(ConfigError, match="int8: factorize needs float weights"):
        factorize(quantized)
    with pytest.raises(ConfigError, match="already int8"):
        quantize_int8(quantized, ["blocks.0.attn.q"])
    with pytest.raises(ConfigError, match="slim first"):
        slim(quantized)
    with pytest.raises(ConfigError, match="slim first"):
        slim(factorize(base_models("bert")))
    with pytest.raises(ConfigError, match="no module 'blocks.9.attn.q'"):
        quantize_int8(base_models("bert"), ["blocks.9.attn.q"])
    with pytest.raises(ConfigError, match="not a Linear"):
        quantize_int8(base_models("bert"), ["blocks.0.attn"])
    decoded = compress(
        base_models("bert"),
        FactorizeConfig(method="ae", ratio=2.0, modules=["attn.v"], ae_steps=2, progress=False),
    )[0]
    with pytest.raises(ConfigError, match="decoded.*Densify it first"):
        quantize_int8(decoded, ["blocks.0.attn.v"])
    assert "blocks.0.attn.v" not in {  # the default leaves decoded modules decoded
        p for p, f in quantize_int8(decoded).config.forms.items() if f["form"] == "int8"
    }
    with pytest.raises(ConfigError, match="float32 CPU"):
        quantize_int8(base_models("bert").double())
    with pytest.raises(ConfigError, match="qscheme"):
        QuantizeConfig(qscheme="per-row")


def test_save_refuses_a_config_that_does_not_describe_the_modules(base_models, tmp_path):
    model = base_models("bert")
    lin = model.blocks[0].attn.q
    replace_module(model, "blocks.0.attn.q", Int8Linear.from_linear(lin))
    with pytest.raises(ConfigError, match="blocks.0.attn.q.*record_forms"):
        save_model(model, tmp_path / "m")
    record_forms(model)
    assert load_model(save_model(model, tmp_path / "m")).config.forms == model.config.forms


def test_config_forms_are_checked():
    base = dict(
        family="bert",
        vocab_size=20,
        hidden_size=8,
        num_layers=1,
        head_dim=4,
        blocks=[{"num_heads": 2, "intermediate_size": 8}],
        layer_to_block=[0],
    )
    with pytest.raises(ConfigError, match="lacks rank"):
        ModelConfig(**base, forms={"blocks.0.attn.q": {"form": "low-rank"}})
    with pytest.raises(ConfigError, match="'form' one of"):
        ModelConfig(**base, forms={"blocks.0.attn.q": {"form": "sparse"}})
    with pytest.raises(ConfigError, match="described by word_rank"):
        ModelConfig(**base, forms={"embeddings.word": {"form": "low-rank", "rank": 2}})
    with pytest.raises(ConfigError, match="int8 in some members"):
        ModelConfig(
            **base | {"num_layers": 2, "layer_to_block": [0, 1], "blocks": base["blocks"] * 2},
            forms={
                "blocks.0.attn.k": {"form": "low-rank", "rank": 2, "shared": "g"},
                "blocks.1.attn.k": {"form": "low-rank", "rank": 2, "shared": "g"},
                "blocks.0.attn.k.basis": {"form": "int8", "qscheme": "per-channel"},
            },
        )
    with pytest.raises(ConfigError, match="no module 'blocks.3.ffn.inp'"):
        Transformer(
            ModelConfig(**base, forms={"blocks.3.ffn.inp": {"form": "low-rank", "rank": 2}})
        )


def test_a_folder_whose_forms_do_not_fit_names_the_entry(base_models, tmp_path):
    folder = save_model(factorize(base_models("distilbert")), tmp_path / "f")
    meta = json.loads((folder / "gearshift.json").read_text())
    meta["config"]["forms"]["blocks.5.ffn.inp"] = {"form": "low-rank", "rank": 2}
    (folder / "gearshift.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="gearshift.json.*no module 'blocks.5.ffn.inp'"):
        load_model(folder)
    del meta["config"]["forms"]["blocks.5.ffn.inp"]
    meta["config"]["forms"]["blocks.0.ffn.inp"]["rank"] += 1
    (folder / "gearshift.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="blocks.0.ffn.inp.*shape"):
        load_model(folder)


# ---------------------------------------------------------------------- older folders
@pytest.mark.parametrize("name", sorted(p.name for p in LEGACY.iterdir() if p.is_dir()))
def test_folders_of_older_formats_load_with_their_outputs(name):
    folder = LEGACY / name
    expected = load_file(str(folder / "expected.safetensors"))
    model = load_model(folder)  # "factorized-model" folders dispatch to load_factorized
    batch = {k: expected[k] for k in ("input_ids", "attention_mask")}
    out = logits(model, batch)
    # Within 1e-5, not bitwise: the expected logits were written on one CPU, and another
    # (a different matmul kernel) rounds the low-rank products differently in the last bits.
    # A tied LM head over a low-rank table is also now (h P) C^T, as slim computed it, where
    # factorize rebuilt the V x E table first: the same product, rounded differently.
    assert torch.allclose(out, expected["logits"], atol=1e-5, rtol=0)
    if name.startswith("factorized"):
        assert load_factorized(folder).config.forms == model.config.forms
        assert any(f["form"] in ("low-rank", "decoded") for f in model.config.forms.values())
    word = model.embeddings.word  # the autoencoder's folder holds a decoded one
    assert isinstance(
        word, DecodedEmbedding if name == "factorized-ae-grouped" else LowRankEmbedding
    )
    n = 8
    counted = count_flops(model, fixed_length_batch(model.config, n))
    assert counted == analytic_flops(model.config, n)  # what `gearshift profile` calls analytic
