"""Compression plugins on tiny random models: merging, padding, placements, FLOPs, folders,
switching between plugins from several threads, and training that leaves the base untouched."""

from __future__ import annotations

import json
import logging
import math
import threading

import pytest
import torch
from safetensors.torch import load_file

from gearshift.constants import CONFIG_NAME, PLUGIN_WEIGHTS_NAME, WEIGHTS_NAME
from gearshift.errors import ArtifactError, ConfigError
from gearshift.measure import count_flops, fixed_length_batch, make_batch
from gearshift.methods.plugins import (
    Plugin,
    PluginConfig,
    PluginModel,
    TokenMerger,
    TokenRestorer,
    load_plugin,
    mean_merging,
    plugin_flops,
    save_plugin,
    truncation_plan,
)
from gearshift.methods.plugins.cli import add_cli, parse_layers
from gearshift.methods.plugins.operating_points import candidate_from_row, retime_rows
from gearshift.methods.plugins.train import PluginDistillation, TargetCache, train_plugin
from gearshift.runtime import BlockShape, ModelConfig, Transformer
from gearshift.train import TrainConfig

TOL = 1e-5


def tiny_config(**kw) -> ModelConfig:
    base = dict(
        family="bert",
        vocab_size=50,
        hidden_size=16,
        num_layers=3,
        head_dim=4,
        blocks=[BlockShape(4, 32)] * 3,
        layer_to_block=[0, 1, 2],
        max_positions=64,
        type_vocab_size=2,
        head={"kind": "classification", "num_labels": 3},
    )
    base.update(kw)
    return ModelConfig(**base)


def tiny_model(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny_config(**kw)).eval()


def randomize(plugin: Plugin, seed: int = 1) -> Plugin:
    """Give a plugin non-zero weights (fresh plugins start as plain mean merging)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in plugin.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return plugin.eval()


def padded_batch(lengths=(13, 9, 6, 1), n: int | None = None, seed: int = 0):
    n = n or max(lengths)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (len(lengths), n), generator=g)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
    ids = ids * mask  # pad id 0
    return {"input_ids": ids, "attention_mask": mask}


CONFIGS = [
    PluginConfig(k=4),
    PluginConfig(k=3, placement="layer"),
    PluginConfig(k=4, keep_first_token=True, bottleneck=8),
    PluginConfig(k=2, placement="layer", keep_first_token=True),
    PluginConfig(k=4, placement="layer", layer_residual=False, layers=[0, 2]),
]


# ---------------------------------------------------------------------- merger and restorer
def test_merger_pools_windows_and_ignores_pads():
    x = torch.arange(2 * 7 * 2, dtype=torch.float32).reshape(2, 7, 2)
    keep = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    merged, info = TokenMerger(2, k=3, learned=False)(x, keep)
    assert merged.shape == (2, 3, 2) and info.n == 7 and not info.first_kept
    assert torch.allclose(merged[0, 0], x[0, :3].mean(0))
    assert torch.allclose(merged[0, 2], x[0, 6])  # a partial window (7 = 2*3 + 1)
    assert torch.allclose(merged[1, 1], x[1, 3:5].mean(0))  # pads 5, 6 left out of the mean
    assert torch.equal(merged[1, 2], torch.zeros(2))  # a window of pads only merges to zero
    assert info.merged_keep.tolist() == [[True, True, True], [True, True, False]]


def test_merger_weights_are_a_softmax_over_real_slots():
    torch.manual_seed(0)
    merger = TokenMerger(4, k=2)
    torch.nn.init.normal_(merger.score.weight)
    x = torch.randn(1, 4, 4)
    keep = torch.tensor([[True, True, True, False]])
    merged, _ = merger(x, keep)
    logits = merger.score(x.reshape(1, 2, 8))[0, 0]
    w = logits.softmax(-1)
    assert torch.allclose(merged[0, 0], w[0] * x[0, 0] + w[1] * x[0, 1], atol=1e-6)
    # The pad's slot has weight 0 and its content cannot matter: change it, same result.
    x2 = x.clone()
    x2[0, 3] = 100.0
    assert torch.equal(merger(x2, keep)[0], merged)
    assert torch.allclose(merged[0, 1], x[0, 2], atol=1e-6)


def test_keep_first_token_passes_the_first_vector_through():
    x = torch.randn(2, 9, 4)
    merger = TokenMerger(4, k=4, learned=False, keep_first_token=True)
    merged, info = merger(x, None)
    assert merged.shape == (2, 3, 4) and info.first_kept and info.merged_keep is None
    assert torch.equal(merged[:, 0], x[:, 0])
    assert torch.allclose(merged[:, 1], x[:, 1:5].mean(1))
    restorer = randomize_module(TokenRestorer(4, k=4, bottleneck=3))
    out = restorer(merged, x, info)
    assert out.shape == x.shape and torch.equal(out[:, 0], x[:, 0])


def randomize_module(module, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return module


def test_restorer_is_the_papers_adapter_on_the_concatenation():
    d, k, r = 6, 3, 5
    restorer = randomize_module(TokenRestorer(d, k, r))
    u, x = torch.randn(2, 3, d), torch.randn(2, 8, d)
    merger_info = TokenMerger(d, k)(x, None)[1]
    out = restorer(u, x, merger_info)
    # Reference: repeat, concat with the per-token input, Linear(2d -> r), tanh, Linear(r -> d).
    rep = u.repeat_interleave(k, dim=1)[:, :8]
    w_down = torch.cat([restorer.down_merged.weight, restorer.down_token.weight], dim=1)  # (r, 2d)
    hidden = torch.tanh(torch.cat([rep, x], dim=-1) @ w_down.T + restorer.down_merged.bias)
    ref = rep + restorer.up(hidden)
    assert out.shape == (2, 8, d)
    assert torch.allclose(out, ref, atol=1e-5)
    # A fresh restorer only repeats.
    assert torch.equal(TokenRestorer(d, k, r)(u, x, merger_info), rep)


@pytest.mark.parametrize("first_kept", [False, True])
@pytest.mark.parametrize("n", [7, 9, 10])
def test_restorer_values_and_gradients_match_the_plain_formula(first_kept, n):
    """The restorer writes windows in place; values and gradients equal repeat + concat."""
    d, k, r = 5, 3, 4
    restorer = randomize_module(TokenRestorer(d, k, r))
    x = torch.randn(2, n, d, requires_grad=True)
    info = TokenMerger(d, k, keep_first_token=first_kept)(x.detach(), None)[1]
    u = torch.randn(2, math.ceil((n - first_kept) / k) + first_kept, d, requires_grad=True)
    out = restorer(u, x, info)

    def reference(u, x):
        head = u[:, :1] if first_kept else u[:, :0]
        ub, xb = (u[:, 1:], x[:, 1:]) if first_kept else (u, x)
        rep = ub.repeat_interleave(k, dim=1)[:, : xb.shape[1]]
        a = restorer.down_merged(rep) + restorer.down_token(xb)
        return torch.cat([head, rep + restorer.up(torch.tanh(a))], dim=1)

    ref = reference(u, x)
    assert torch.allclose(out, ref, atol=1e-6)
    weights = torch.randn_like(ref)
    params = [u, x, *restorer.parameters()]
    got = torch.autograd.grad((out * weights).sum(), params)
    want = torch.autograd.grad((ref * weights).sum(), params)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-5)


# ---------------------------------------------------------------------- whole model
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_padded_batch_equals_each_row_alone(config):
    model = tiny_model()
    plugin = randomize(Plugin(config, model))
    batch = padded_batch()
    with torch.no_grad():
        out = model(**batch, plan=plugin.plan())
        full = model(**batch).logits
    assert out.last_hidden_state.shape == (4, 13, 16)
    assert not torch.allclose(out.logits, full, atol=1e-3)  # the plugin changes the result
    for i, length in enumerate(batch["attention_mask"].sum(1).tolist()):
        row = {k: v[i : i + 1, :length] for k, v in batch.items()}
        with torch.no_grad():
            alone = model(**row, plan=plugin.plan())
        assert torch.allclose(out.logits[i], alone.logits[0], atol=TOL)
        assert torch.allclose(
            out.last_hidden_state[i, :length], alone.last_hidden_state[0], atol=TOL
        )


@pytest.mark.parametrize("placement", ["ffn", "layer"])
def test_fresh_plugin_equals_training_free_mean_merging(placement):
    model = tiny_model()
    batch = padded_batch()
    fresh = Plugin(PluginConfig(k=4, placement=placement), model)
    mean = mean_merging(model, k=4, placement=placement)
    assert mean.num_parameters() == 0 and fresh.num_parameters() > 0
    with torch.no_grad():
        a = model(**batch, plan=fresh.plan()).logits
        b = model(**batch, plan=mean.plan()).logits
    assert torch.allclose(a, b, atol=1e-6)


def test_only_the_chosen_layers_are_wrapped():
    model = tiny_model()
    plugin = Plugin(PluginConfig(k=2, layers=[1]), model)
    assert list(plugin.plan().ffn_wrap) == [1] and not plugin.plan().block_wrap
    assert list(Plugin(PluginConfig(k=2, placement="layer"), model).plan().block_wrap) == [0, 1, 2]
    with pytest.raises(
        ConfigError, match=r"plugin layers \[5\] do not exist: the base model has 3 layers"
    ):
        Plugin(PluginConfig(k=2, layers=[5]), model)


@pytest.mark.parametrize("placement", ["ffn", "layer"])
def test_token_classification_gets_full_length_logits(placement):
    model = tiny_model(
        head={"kind": "token_classification", "num_labels": 5, "dense_activation": None}
    )
    plugin = randomize(Plugin(PluginConfig(k=4, placement=placement, keep_first_token=True), model))
    batch = padded_batch((11, 7))
    with torch.no_grad():
        logits = model(**batch, plan=plugin.plan()).logits
    assert logits.shape == (2, 11, 5)
    # Tokens of one window get different logits: the restorer's per-token input at work.
    assert not torch.allclose(logits[0, 1], logits[0, 2], atol=1e-4)


def test_truncation_is_the_model_on_the_first_tokens():
    model = tiny_model()
    batch = padded_batch((13, 9, 6, 1))
    with torch.no_grad():
        out = model(**batch, plan=truncation_plan(model, 4)).logits
    for i, length in enumerate([13, 9, 6, 1]):
        t = -(-length // 4)
        with torch.no_grad():
            ref = model(input_ids=batch["input_ids"][i : i + 1, :t]).logits
        assert torch.allclose(out[i], ref[0], atol=TOL)


def test_causal_models_are_refused():
    model = tiny_model(causal=True, family="gpt2")
    with pytest.raises(ConfigError, match="causal gpt2 model would see future tokens"):
        Plugin(PluginConfig(), model)


# ---------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize(
    "config", [*CONFIGS, PluginConfig(k=8, merge="mean", bottleneck=0)], ids=lambda c: c.name
)
@pytest.mark.parametrize("n", [16, 13, 5])
def test_counted_flops_equal_the_closed_form(config, n):
    model = tiny_model()
    plugin = Plugin(config, model)
    counted = count_flops(model, fixed_length_batch(model.config, n), plugin.plan())
    assert counted == plugin_flops(model.config, plugin.config, n)


def test_plugin_parameters_per_layer_match_the_paper():
    model = tiny_model()
    d, k, r = 16, 4, 8
    plugin = Plugin(PluginConfig(k=k, bottleneck=r), model)
    per_layer = k * k * d + k + (2 * d * r + r) + (r * d + d)
    assert plugin.num_parameters() == 3 * per_layer


# ---------------------------------------------------------------------- config and folders
def test_config_round_trip_drops_unknown_keys(caplog):
    config = PluginConfig(k=8, placement="layer", layers=[0, 2], keep_first_token=True)
    data = {**config.to_dict(), "future_option": 3}
    with caplog.at_level(logging.WARNING, logger="gearshift.plugins"):
        again = PluginConfig.from_dict(data)
    assert again == config
    assert "ignoring unknown plugin config keys: future_option" in caplog.text
    assert config.name == "k8-layer-cls"
    assert "Compression ratio" in PluginConfig.help()["k"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=1), "k=1 is invalid"),
        (dict(placement="attn"), "placement='attn' is invalid: choose one of ffn, layer"),
        (dict(bottleneck=-1), "bottleneck=-1 is invalid"),
        (dict(layers=[1, 1]), "repeats a layer"),
        (dict(merge="max"), "merge='max' is invalid"),
    ],
)
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PluginConfig(**kwargs)


def test_save_and_load_give_the_same_outputs(tmp_path):
    model = tiny_model()
    plugin = randomize(Plugin(PluginConfig(k=3, placement="layer", keep_first_token=True), model))
    folder = save_plugin(plugin, tmp_path / "p", extra={"training": {"stage": "C"}})
    meta = json.loads((folder / CONFIG_NAME).read_text())
    assert meta["kind"] == "plugin" and meta["training"] == {"stage": "C"}
    assert meta["config"]["base_model"] == {
        "family": "bert",
        "hidden_size": 16,
        "num_layers": 3,
        "source": None,
    }
    weights = load_file(str(folder / PLUGIN_WEIGHTS_NAME))
    assert sum(t.numel() for t in weights.values()) == plugin.num_parameters()  # the plugin only
    again = load_plugin(folder, model)
    batch = padded_batch()
    with torch.no_grad():
        assert torch.equal(
            model(**batch, plan=again.plan()).logits, model(**batch, plan=plugin.plan()).logits
        )


def test_loading_onto_another_model_says_what_differs(tmp_path):
    folder = save_plugin(Plugin(PluginConfig(), tiny_model()), tmp_path / "p")
    other = tiny_model(
        family="roberta",
        hidden_size=32,
        head_dim=8,
        num_layers=2,
        blocks=[BlockShape(4, 32)] * 2,
        layer_to_block=[0, 1],
    )
    with pytest.raises(ArtifactError) as err:
        load_plugin(folder, other)
    msg = str(err.value)
    assert "family: plugin expects 'bert', base model has 'roberta'" in msg
    assert "hidden size: plugin expects 16, base model has 32" in msg
    assert "layers: plugin expects 3, base model has 2" in msg
    deeper = tiny_model(num_layers=4, blocks=[BlockShape(4, 32)] * 4, layer_to_block=[0, 1, 2, 3])
    with pytest.raises(
        ArtifactError, match=r"^plugin .* \(layers: plugin expects 3, base model has 4\)"
    ):
        PluginModel(deeper).load_plugin("k4", folder)


def test_loading_a_model_folder_as_a_plugin_fails_clearly(tmp_path):
    from gearshift.runtime import save_model

    model = tiny_model()
    save_model(model, tmp_path / "m")
    with pytest.raises(ArtifactError, match="describes a model folder, not a plugin"):
        load_plugin(tmp_path / "m", model)
    with pytest.raises(ArtifactError, match="is not a plugin folder"):
        load_plugin(tmp_path / "nothing", model)


# ---------------------------------------------------------------------- switching
def make_switchable():
    model = tiny_model()
    pm = PluginModel(model)
    pm.add_plugin("k2", randomize(Plugin(PluginConfig(k=2), model), 1))
    pm.add_plugin("k4", randomize(Plugin(PluginConfig(k=4, placement="layer"), model), 2))
    pm.add_plugin("k8", mean_merging(model, 8))
    return model, pm


def test_use_plugin_switches_between_batches():
    model, pm = make_switchable()
    batch = padded_batch()
    with torch.no_grad():
        base = model(**batch).logits
        assert pm.active_plugin is None and torch.equal(pm(**batch).logits, base)
        pm.use_plugin("k4")
        assert torch.equal(pm(**batch).logits, model(**batch, plan=pm.plugins["k4"].plan()).logits)
        with pm.plugin("k2"):
            assert pm.active_plugin == "k2"
            k2 = pm(**batch).logits
        assert pm.active_plugin == "k4"
        assert torch.equal(k2, model(**batch, plan=pm.plugins["k2"].plan()).logits)
        assert torch.equal(pm(**batch, plugin=None).logits, base)  # one call without plugin
        pm.use_plugin(None)
        assert torch.equal(pm(**batch).logits, base)
    with pytest.raises(ConfigError, match=r"no plugin named 'k3' is loaded \(loaded: k2, k4, k8\)"):
        pm.use_plugin("k3")
    assert all(not p.requires_grad for p in model.parameters())


def test_threads_each_use_their_own_plugin():
    _, pm = make_switchable()
    batch = padded_batch()
    names = [None, "k2", "k4", "k8"]
    with torch.no_grad():
        expected = {name: pm(**batch, plugin=name).logits for name in names}
    assert not torch.allclose(expected["k2"], expected["k4"])
    barrier = threading.Barrier(len(names))
    results: dict = {name: [] for name in names}
    errors: list = []

    def serve(name):
        try:
            pm.use_plugin(name)
            barrier.wait()
            for i in range(20):
                with torch.no_grad():
                    if i % 2:
                        results[name].append(pm(**batch).logits)
                    else:
                        with pm.plugin(name):
                            results[name].append(pm(**batch).logits)
                assert pm.active_plugin == name
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name in names:
        assert len(results[name]) == 20
        for got in results[name]:
            assert torch.allclose(got, expected[name], atol=1e-6)
    assert pm.active_plugin is None  # the threads' choices did not leak into this one


def test_default_plugin_applies_to_threads_that_did_not_choose():
    _, pm = make_switchable()
    pm.default_plugin = "k2"
    seen = []
    t = threading.Thread(target=lambda: seen.append(pm.active_plugin))
    t.start()
    t.join()
    assert seen == ["k2"]


# ---------------------------------------------------------------------- training
def tiny_features(count: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        n = int(torch.randint(3, 14, (1,), generator=g))
        out.append(
            {
                "input_ids": torch.randint(1, 50, (n,), generator=g).tolist(),
                "attention_mask": [1] * n,
                "labels": 0,
            }
        )
    return out


def collate(items):
    n = max(len(i["input_ids"]) for i in items)
    ids = torch.tensor([i["input_ids"] + [0] * (n - len(i["input_ids"])) for i in items])
    mask = torch.tensor([i["attention_mask"] + [0] * (n - len(i["attention_mask"])) for i in items])
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.tensor([i["labels"] for i in items]),
    }


@pytest.mark.parametrize("placement, kl", [("ffn", 0.0), ("layer", 1.0)])
def test_training_changes_only_the_plugin_and_lowers_the_loss(tmp_path, placement, kl):
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plugin = Plugin(PluginConfig(k=4, placement=placement, bottleneck=8), model)
    features = tiny_features()
    module = PluginDistillation(model, plugin, kl_weight=kl)
    batch = collate(features)
    with torch.no_grad():
        loss_before = float(module(batch)[0])
    cfg = TrainConfig(
        output_dir=str(tmp_path),
        max_steps=20,
        batch_size=16,
        learning_rate=1e-2,
        progress=False,
        save_every=0,
        log_every=5,
    )
    res = train_plugin(
        model, plugin, features, collate, cfg, kl_weight=kl, extra={"training": {"stage": "C"}}
    )
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"base parameter {key} changed"
    assert all(not p.requires_grad for p in model.parameters())
    with torch.no_grad():
        loss_after = float(module(batch)[0])
    assert loss_after < 0.6 * loss_before
    assert res.steps == 20 and res.plugin_dir == tmp_path / "plugin"
    # The checkpoint holds the plugin's weights only, and the saved plugin is the trained one.
    ckpt = load_file(str(tmp_path / "checkpoint" / WEIGHTS_NAME))
    assert all(k.startswith("plugin.layers.") for k in ckpt)
    meta = json.loads((res.plugin_dir / CONFIG_NAME).read_text())
    assert meta["training"]["stage"] == "C" and meta["training"]["steps"] == 20
    assert meta["training"]["kl_weight"] == kl
    again = load_plugin(res.plugin_dir, model)
    for key, value in plugin.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)
    if kl:
        assert any("kl" in r for r in res.history if r.get("kind") == "train")


@pytest.mark.parametrize(
    "head",
    [
        {"kind": "classification", "num_labels": 3},
        {"kind": "regression", "num_labels": 1},
        {"kind": "token_classification", "num_labels": 5, "dense_activation": None},
    ],
)
def test_cached_targets_give_the_same_loss_and_skip_the_reference_pass(head):
    model = tiny_model(head=head)
    plugin = randomize(Plugin(PluginConfig(k=2, placement="ffn", bottleneck=4), model))
    features = tiny_features(24)
    plain = PluginDistillation(model, plugin, kl_weight=1.0)
    cache = TargetCache()
    cached = PluginDistillation(model, plugin, kl_weight=1.0, cache=cache)
    first, second = collate(features[:12]), collate(features[12:])
    # Rebatched: the same examples in another order and another padding length.
    mixed = collate(features[18:] + features[:6])
    calls = []
    hook = model.register_forward_pre_hook(
        lambda m, a, kw: calls.append(kw.get("plan")), with_kwargs=True
    )
    try:
        with torch.no_grad():
            for batch in (first, second):
                a, b = plain(batch), cached(batch)
                assert torch.allclose(a[0], b[0], atol=1e-6)
            assert len(cache) == 24 and cache.misses == 24 and cache.hits == 0
            calls.clear()
            a, b = plain(mixed), cached(mixed)
    finally:
        hook.remove()
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(
        a[1]["kl"], b[1]["kl"], atol=1e-5
    )
    assert cache.hits == 12
    # plain: reference + plugin pass; cached: the plugin pass only.
    assert [c is None for c in calls] == [True, False, False]


def test_a_target_cache_refuses_layerwise_targets():
    model = tiny_model()
    plugin = Plugin(PluginConfig(k=2, bottleneck=4), model)
    with pytest.raises(ConfigError, match="layerwise"):
        PluginDistillation(model, plugin, layerwise=True, cache=TargetCache())


def test_training_resumes_from_its_checkpoint(tmp_path):
    model = tiny_model()
    features = tiny_features()
    cfg = dict(max_steps=6, batch_size=16, learning_rate=1e-2, progress=False, save_every=3)
    full = Plugin(PluginConfig(k=2, bottleneck=4), model)
    train_plugin(model, full, features, collate, TrainConfig(output_dir=str(tmp_path / "a"), **cfg))
    # A second run into the same folder with resume=True has nothing left to do.
    again = Plugin(PluginConfig(k=2, bottleneck=4), model)
    res = train_plugin(
        model,
        again,
        features,
        collate,
        TrainConfig(output_dir=str(tmp_path / "a"), **cfg),
        resume=True,
    )
    assert res.steps == 6
    for key, value in full.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)


def test_a_parameter_free_plugin_cannot_be_trained(tmp_path):
    model = tiny_model()
    with pytest.raises(ConfigError, match="has no parameters to train"):
        train_plugin(
            model,
            mean_merging(model, 4),
            tiny_features(8),
            collate,
            TrainConfig(output_dir=str(tmp_path), max_steps=1, progress=False),
        )


# ---------------------------------------------------------------------- CLI
def test_cli_parses_plugin_commands():
    import argparse

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "plugin",
            "train",
            "--model",
            "m",
            "--output",
            "o",
            "--k",
            "8",
            "--placement",
            "layer",
            "--layers",
            "0,2",
            "--stage",
            "A",
            "--kl",
        ]
    )
    assert (args.k, args.placement, args.layers, args.stage, args.kl) == (
        8,
        "layer",
        [0, 2],
        "A",
        True,
    )
    assert args.bottleneck == PluginConfig.bottleneck
    args = parser.parse_args(["plugin", "eval", "--model", "m", "--plugin", "a", "b"])
    assert args.plugin == ["a", "b"]
    assert parse_layers("all") is None


@pytest.mark.parametrize("family", ["bert", "roberta", "albert", "distilbert"])
@pytest.mark.parametrize("placement", ["ffn", "layer"])
def test_every_encoder_family_takes_plugins(family, placement, hf_tiny_dir):
    from conftest import random_batch

    from gearshift.runtime import load_hf

    model = load_hf(str(hf_tiny_dir(family, "classification")))
    plugin = randomize(Plugin(PluginConfig(k=3, placement=placement, bottleneck=4), model))
    batch = random_batch(family, batch=3, length=11)
    with torch.no_grad():
        together = model(**batch, plan=plugin.plan()).logits
        assert not torch.allclose(together, model(**batch).logits, atol=1e-4)
        for i, length in enumerate(batch["attention_mask"].sum(1).tolist()):
            row = {k: v[i : i + 1, :length] for k, v in batch.items()}
            assert torch.allclose(together[i], model(**row, plan=plugin.plan()).logits[0], atol=TOL)


# ---------------------------------------------------------------------- re-timing saved rows
class WordTokenizer:
    """One id per whitespace word ([CLS]=1 ... [SEP]=2, pad 0), enough for make_batch."""

    def __call__(self, texts, pairs=None, truncation=True, max_length=128, **_):
        rows = [[1] + [3 + len(w) % 40 for w in t.split()][: max_length - 2] + [2] for t in texts]
        ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}


def test_retime_rows_rebuilds_every_candidate_and_keeps_the_rest(tmp_path):
    model = tiny_model()
    plugin = randomize(Plugin(PluginConfig(k=2), model))
    folder = plugin.save_pretrained(tmp_path / "k2-ffn")
    rows = [
        {"task": "t", "method": "plugin", "setting": "k2-ffn", "score": 70.0,
         "latency_ratio_b1": 9.0, "extras": {"plugin_dir": str(folder)}},
        {"task": "t", "method": "teacher", "setting": "full", "score": 80.0, "extras": {}},
        {"task": "t", "method": "mean-merging", "setting": "k2-layer-mean-cls", "extras": {}},
        {"task": "t", "method": "truncation", "setting": "k2-truncate", "extras": {}},
    ]  # fmt: skip
    texts = ["a bb ccc dddd eeeee f", "gg hhh", "i jj kkk llll"]
    out = retime_rows(
        model, WordTokenizer(), rows, texts, command="cmd", threads=1, seq_len=32, warmup=0,
        repeats=2, batch_sizes=(1, 4),
    )  # fmt: skip
    assert [r["setting"] for r in out] == ["full", "k2-ffn", "k2-layer-mean-cls", "k2-truncate"]
    assert out[0]["latency_ratio_b1"] == 1.0 and out[0]["latency_ratio_b4"] == 1.0
    for r in out:
        assert r["latency_ratio_b1"] > 0 and r["extras"]["latency_ms_b4"] > 0
        assert r["extras"]["latency_measured"]["command"] == "cmd"
    assert out[1]["score"] == 70.0 and rows[0]["latency_ratio_b1"] == 9.0  # copies, scores kept
    # FLOPs are recounted with the current code (the row said nothing about them).
    alone = [count_flops(model, make_batch(WordTokenizer(), [t], 1)) for t in texts]
    assert out[0]["flops_dynamic"] == pytest.approx(sum(alone) / len(alone))
    assert out[0]["extras"]["saved_flops_128"] == 0.0
    assert 0 < out[3]["flops_128"] < out[0]["flops_128"]  # truncation
    for r in out:
        assert r["extras"]["saved_flops_128"] == 1 - r["flops_128"] / out[0]["flops_128"]

    batch = padded_batch()
    with torch.no_grad():

        def run(plan):
            return model(**batch, plan=plan).logits

        built = {r["setting"]: candidate_from_row(r, model) for r in rows}
        assert torch.equal(run(built["k2-ffn"].plan), run(plugin.plan()))
        assert built["k2-ffn"].params_added == plugin.num_parameters()
        mean = mean_merging(model, 2, "layer", keep_first_token=True)
        assert torch.equal(run(built["k2-layer-mean-cls"].plan), run(mean.plan()))
        assert torch.equal(run(built["k2-truncate"].plan), run(truncation_plan(model, 2)))


def test_retime_rows_refuses_what_it_cannot_rebuild(tmp_path):
    model, tok = tiny_model(), WordTokenizer()
    teacher = {"task": "t", "method": "teacher", "setting": "full", "extras": {}}
    gone = {"task": "t", "method": "plugin", "setting": "k4-ffn",
            "extras": {"plugin_dir": str(tmp_path / "gone")}}  # fmt: skip
    with pytest.raises(ArtifactError, match="is not there"):
        retime_rows(model, tok, [teacher, gone], ["a b"], command="c", repeats=1)
    with pytest.raises(ConfigError, match="teacher row"):
        retime_rows(model, tok, [gone], ["a b"], command="c", repeats=1)
    odd = {"task": "t", "method": "mean-merging", "setting": "whatever", "extras": {}}
    with pytest.raises(ConfigError, match="cannot rebuild"):
        retime_rows(model, tok, [teacher, odd], ["a b"], command="c", seq_len=32, repeats=1)
    other = dict(teacher, task="u", setting="other")
    with pytest.raises(ConfigError, match="one task at a time"):
        retime_rows(model, tok, [teacher, other], ["a b"], command="c", seq_len=32, repeats=1)


def test_benchmark_settings_keep_only_the_named_plugins(monkeypatch, capsys):
    """``benchmarks/plugins.py --settings`` trains only the named arms (a seed run of
    k4-ffn-cls without re-training k4-ffn); a name the other options do not make stops the
    run before any work, naming what they do make."""
    import importlib
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("plugins")
    every = [s.name for s in bench.plugin_specs([4], ["ffn"], True, ("cls", "kl"))]
    assert every == ["k4-ffn", "k4-ffn-cls", "k4-ffn+kl"]
    kept = bench.plugin_specs([4], ["ffn"], True, ("cls", "kl"), settings=["k4-ffn-cls"])
    assert [s.name for s in kept] == ["k4-ffn-cls"] and kept[0].config.keep_first_token
    with pytest.raises(ValueError, match="k4-layer-cls.*k4-ffn, k4-ffn-cls"):
        bench.plugin_specs([4], ["ffn"], True, ("cls",), settings=["k4-layer-cls"])
    with pytest.raises(SystemExit):
        bench.main(["--tasks", "mrpc", "--ks", "4", "--placements", "ffn", "--settings", "k9"])
    assert "--settings k9: no such plugin" in capsys.readouterr().err


def test_benchmark_seed_runs_keep_the_timed_training_free_rows(monkeypatch):
    """A ``--no-latency`` (seed) run scores the teacher and the training-free baselines
    again: where that reproduces a timed row exactly it is not written (it would replace the
    timed row, seed None replacing every seed); against another teacher it is. The plot
    has one point per setting: the mean over this teacher's seeds, else the other rows'."""
    import importlib
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("plugins")

    def row(method, setting, score, ref, seed=None, b32=None):
        return {
            "task": "sst2",
            "method": method,
            "setting": setting,
            "score": score,
            "reference_score": ref,
            "seed": seed,
            "latency_ratio_b32": b32,
            "extras": {},
        }

    earlier = [
        row("teacher", "full", 88.3, 88.3, b32=1.0),
        row("truncation", "k4-truncate", 68.3, 88.3, b32=0.3),
    ]
    new = [
        row("teacher", "full", 88.3, 88.3),
        row("truncation", "k4-truncate", 68.3, 88.3),
        row("mean-merging", "k4-ffn-mean", 79.1, 88.3),  # no timed row to keep
        row("plugin", "k4-ffn", 86.2, 88.3, seed=43),
    ]
    kept = bench.keep_timed(new, earlier)
    assert [(r["method"], r["setting"]) for r in kept] == [
        ("mean-merging", "k4-ffn-mean"),
        ("plugin", "k4-ffn"),
    ]
    rebuilt = [row("teacher", "full", 88.65, 88.65), row("truncation", "k4-truncate", 69.2, 88.65)]
    assert bench.keep_timed(rebuilt, earlier) == rebuilt  # another teacher: new measurements
    points = bench.plot_points(
        [
            row("plugin", "k4-ffn", 87.0, 88.3, seed=43),
            row("plugin", "k4-ffn", 86.0, 88.3, seed=44),
            row("plugin", "k4-ffn", 90.0, 88.65, seed=42),
            row("plugin", "k8-ffn", 85.0, 88.65, seed=42),
        ],
        88.3,
    )
    assert {(p["setting"], p["score"]) for p in points} == {("k4-ffn", 86.5), ("k8-ffn", 85.0)}
