"""The runtime reproduces Hugging Face's own models, and its attach points behave."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, make_hf_model, random_batch

from gearshift.errors import ArtifactError, ConfigError
from gearshift.runtime import (
    BlockShape,
    ForwardPlan,
    ModelConfig,
    Step,
    Transformer,
    load_hf,
    load_model,
    save_model,
)

TOL = 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_base_model_matches_hf(family, hf_tiny_dir):
    hf = make_hf_model(family)
    model = load_hf(str(hf_tiny_dir(family)))
    batch = random_batch(family)
    with torch.no_grad():
        ours = model(**batch).last_hidden_state
        ref = hf(**batch).last_hidden_state
    keep = batch["attention_mask"].bool()
    assert ours.shape == ref.shape
    assert (ours - ref)[keep].abs().max() <= TOL


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", ["classification", "token_classification"])
def test_task_heads_match_hf(family, head, hf_tiny_dir):
    hf = make_hf_model(family, head)
    model = load_hf(str(hf_tiny_dir(family, head)))
    assert model.config.head.kind == head
    batch = random_batch(family)
    with torch.no_grad():
        ours = model(**batch).logits
        ref = hf(**batch).logits
    if head == "token_classification":
        keep = batch["attention_mask"].bool()
        ours, ref = ours[keep], ref[keep]
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() <= TOL


def test_gpt2_lm_head_and_kv_cache_match_hf(tmp_path):
    import transformers as T
    from conftest import tiny_hf_config

    torch.manual_seed(0)
    hf = T.GPT2LMHeadModel(tiny_hf_config("gpt2")).eval()
    hf.save_pretrained(tmp_path)
    model = load_hf(str(tmp_path))
    assert model.config.head.kind == "lm"
    ids = torch.randint(0, 98, (2, 9))
    with torch.no_grad():
        full = model(ids).logits
        assert (full - hf(ids).logits).abs().max() <= TOL
        # Decoding with the cache gives the same logits as the full pass.
        out = model(ids[:, :5], use_cache=True)
        steps = [out.logits]
        cache = out.past_key_values
        for t in range(5, 9):
            out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
    assert (torch.cat(steps, dim=1) - full).abs().max() <= TOL


def test_albert_shares_blocks(hf_tiny_dir):
    model = load_hf(str(hf_tiny_dir("albert")))
    assert model.config.layer_to_block == [0, 0, 1, 1]
    assert len(model.blocks) == 2 and model.config.is_shared


def tiny_config(**kw) -> ModelConfig:
    base = dict(
        family="bert",
        vocab_size=50,
        hidden_size=16,
        num_layers=3,
        head_dim=4,
        blocks=[BlockShape(4, 32), BlockShape(2, 8), BlockShape(0, 0)],
        layer_to_block=[0, 1, 2],
        max_positions=32,
        type_vocab_size=2,
    )
    base.update(kw)
    return ModelConfig(**base)


def test_heterogeneous_widths_run_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Transformer(tiny_config(head={"kind": "classification", "num_labels": 2})).eval()
    assert model.blocks[1].attn.q.out_features == 8 and model.blocks[1].ffn.inp.out_features == 8
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        before = model(ids).logits
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.config.blocks == model.config.blocks
    with torch.no_grad():
        assert torch.equal(again(ids).logits, before)


def test_low_rank_word_embedding_runs_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = Transformer(tiny_config(word_rank=3, head={"kind": "classification", "num_labels": 2}))
    model.eval()
    assert model.embeddings.word.codes.weight.shape == (50, 3)
    assert model.embeddings.word.projection.weight.shape == (16, 3)
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        before = model(ids).logits
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.config.word_rank == 3
    with torch.no_grad():
        assert torch.equal(again(ids).logits, before)
    with pytest.raises(ConfigError, match="word_rank"):
        tiny_config(word_rank=0)


def test_euler_step_one_is_exactly_the_model(hf_tiny_dir):
    model = load_hf(str(hf_tiny_dir("albert")))
    batch = random_batch("albert")
    steps = [
        Step(block=b, layer=i, step_size=1.0) for i, b in enumerate(model.config.layer_to_block)
    ]
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
        same = model(**batch, plan=ForwardPlan(steps=steps)).last_hidden_state
        half = model(
            **batch, plan=ForwardPlan(steps=[Step(0, 1, 2.0), Step(1, 3, 2.0)])
        ).last_hidden_state
    assert torch.equal(ref, same)
    assert not torch.allclose(ref, half)


def test_ffn_and_block_wraps_are_called_per_layer():
    torch.manual_seed(0)
    model = Transformer(tiny_config()).eval()
    seen = []

    def ffn_wrap(ffn, x, keep):
        seen.append(("ffn", x.shape[1]))
        return ffn(x) * 0.0

    def block_wrap(block_fn, h, mask):
        seen.append(("block", h.shape[1]))
        return block_fn(h, mask)

    ids = torch.randint(0, 50, (2, 6))
    plan = ForwardPlan(ffn_wrap={0: ffn_wrap}, block_wrap={2: block_wrap})
    with torch.no_grad():
        out = model(ids, plan=plan).last_hidden_state
        ref = model(ids).last_hidden_state
    assert seen == [("ffn", 6), ("block", 6)]
    assert not torch.allclose(out, ref)


def test_batched_early_exit_equals_each_row_alone():
    torch.manual_seed(0)
    model = Transformer(tiny_config(blocks=[BlockShape(4, 32)] * 3)).eval()
    ids = torch.randint(1, 50, (4, 6))
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0

    def exit_fn(layer, h, m, rows):  # row r leaves after layer r (rows 0 and 1)
        return rows == layer

    with torch.no_grad():
        out = model(ids, attention_mask=mask, plan=ForwardPlan(exit=exit_fn))
        for r in range(4):
            alone = model(ids[r : r + 1], attention_mask=mask[r : r + 1], output_hidden_states=True)
            step = int(out.exit_step[r])
            assert step == min(r, 2)
            ref = alone.hidden_states[step + 1][0]
            keep = mask[r].bool()
            assert (out.last_hidden_state[r][keep] - ref[keep]).abs().max() <= 1e-5


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="layer_to_block"):
        tiny_config(layer_to_block=[0, 1])
    with pytest.raises(ConfigError, match="block"):
        tiny_config(layer_to_block=[0, 1, 7])


def test_loading_bad_folders_says_what_is_wrong(tmp_path, hf_tiny_dir):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_model(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="gearshift.json is missing"):
        load_model(empty)
    with pytest.raises(ArtifactError, match="Hugging Face checkpoint"):
        load_model(hf_tiny_dir("bert"))
    torch.manual_seed(0)
    model = Transformer(tiny_config())
    save_model(model, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="model.safetensors is missing"):
        load_model(tmp_path / "m")
    save_model(model, tmp_path / "m2")
    other = Transformer(tiny_config(blocks=[BlockShape(4, 32)] * 3))
    save_model(other, tmp_path / "m3")
    (tmp_path / "m2" / "model.safetensors").replace(tmp_path / "m3" / "model.safetensors")
    with pytest.raises(ArtifactError, match="different models"):
        load_model(tmp_path / "m3")
    (tmp_path / "m3" / "gearshift.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_model(tmp_path / "m3")


@pytest.mark.integration
def test_real_minilm_matches_hf_with_pairs_and_padding():
    import transformers as T

    from gearshift.paths import resolve_model_name
    from gearshift.runtime import load_pretrained, load_tokenizer

    path = resolve_model_name("minilm-l6")
    ours = load_pretrained("minilm-l6", head_kind=None)
    ref = T.AutoModel.from_pretrained(path).eval()
    tok = load_tokenizer("minilm-l6")
    batch = tok(
        ["A man is playing a guitar.", "The cat sat."],
        ["Someone plays an instrument on a stage in front of a crowd.", "A dog barked loudly."],
        padding=True,
        return_tensors="pt",
    )
    assert batch["token_type_ids"].any() and not batch["attention_mask"].all()
    with torch.no_grad():
        a = ours(**batch).last_hidden_state
        b = ref(**batch).last_hidden_state
    assert (a - b).abs().max() <= TOL


def test_unknown_hub_name_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ArtifactError, match="not a local folder"):
        load_hf("no-such-org/no-such-model")
