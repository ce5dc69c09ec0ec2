"""Engines (ONNX Runtime fp32/int8, torch.compile) against the eager runtime on tiny models."""

from __future__ import annotations

import onnxruntime  # noqa: E402,F401  (a hard dependency: a missing one fails, never skips)
import pytest
import torch
from conftest import FAMILIES, random_batch  # noqa: E402

from gearshift import engine  # noqa: E402
from gearshift.engine.onnx import OnnxEngine  # noqa: E402
from gearshift.errors import ConfigError  # noqa: E402
from gearshift.runtime import load_hf  # noqa: E402

SHAPES = [(3, 11), (1, 5), (5, 19), (2, 3)]  # every row keeps a real token


@pytest.fixture(scope="module")
def tiny(hf_tiny_dir):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = load_hf(str(hf_tiny_dir(family, "classification")))
        return cache[family]

    return get


def _batches(family):
    for i, (b, n) in enumerate(SHAPES):
        batch = random_batch(family, b, n, seed=i + 5)
        if b == 1:  # one row without any padding: the unmasked case
            batch["attention_mask"][:] = 1
        yield batch


def _eager(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_matches_eager_on_every_family(tiny, family):
    model = tiny(family)
    run = engine.build(model, "onnx", threads=1)
    assert run.mode == "dynamic"
    # encoders HF can hold go through their HF form, whose attention ORT fuses
    assert run.route == ("gearshift" if family == "gpt2" else "hf")
    for batch in _batches(family):
        got = run(**batch).logits
        ref = _eager(model, batch)
        assert got.shape == ref.shape
        assert (got - ref).abs().max() <= 1e-4, (family, tuple(batch["input_ids"].shape))


def test_onnx_graph_is_fused_and_unfused_on_request(tiny):
    import onnx

    model = tiny("bert")
    fused = engine.build(model, "onnx", threads=1)
    ops = {node.op_type for node in onnx.load(str(fused.graph_path())).graph.node}
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= ops
    plain = OnnxEngine(model, threads=1, fuse=False)
    ops = {node.op_type for node in onnx.load(str(plain.graph_path())).graph.node}
    assert "SkipLayerNormalization" not in ops
    batch = random_batch("bert")
    assert (fused(**batch).logits - plain(**batch).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_onnx_int8_is_quantized_and_close(tiny, family):
    import onnx

    model = tiny(family)
    run = engine.build(model, "onnx-int8", threads=1)
    ops = {node.op_type for node in onnx.load(str(run.graph_path())).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}, ops
    batch = random_batch(family, 4, 9)
    got, ref = run(**batch).logits, _eager(model, batch)
    diff = (got - ref).abs().max()
    assert 0 < diff < 0.05 * max(1.0, float(ref.abs().max())) + 0.05


@pytest.mark.slow  # inductor compiles each family once (tens of seconds on a busy CPU)
@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_matches_eager(tiny, family):
    model = tiny(family)
    run = engine.build(model, "compiled", threads=1)
    for batch in list(_batches(family))[:2]:
        assert (run(**batch).logits - _eager(model, batch)).abs().max() <= 1e-4


def test_eager_engine_is_the_model(tiny):
    model = tiny("bert")
    batch = random_batch("bert")
    assert torch.equal(engine.build(model, "eager")(**batch).logits, _eager(model, batch))


def test_unknown_engine_names_the_choices(tiny):
    with pytest.raises(ConfigError, match="onnx-int8"):
        engine.build(tiny("bert"), "tensorrt")


def test_factorized_model_exports(tiny):
    import copy

    import onnx

    from gearshift.methods.factorize.model import replace_module
    from gearshift.methods.factorize.modules import LowRankLinear

    model = copy.deepcopy(tiny("bert"))
    torch.manual_seed(0)
    for name in ["blocks.0.ffn.inp", "blocks.1.attn.q", "blocks.2.ffn.out"]:
        old = model.get_submodule(name)
        new = LowRankLinear(old.in_features, old.out_features, rank=4)
        replace_module(model, name, new)
    run = engine.build(model, "onnx", threads=1)
    assert run.route == "gearshift"  # low-rank Linears have no HF form
    ops = {node.op_type for node in onnx.load(str(run.graph_path())).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops  # the runtime's own graph fuses too
    for batch in _batches("bert"):
        assert (run(**batch).logits - _eager(model, batch)).abs().max() <= 1e-4


def test_regression_head_on_the_hf_route(tiny):
    import copy

    model = copy.deepcopy(tiny("albert"))
    model.set_head("regression", 1)
    _randomize(model.head, 3, 0.3)
    run = engine.build(model, "onnx", threads=1)
    assert run.route == "hf"
    for batch in _batches("albert"):
        got, ref = run(**batch).logits, _eager(model, batch)
        assert got.shape == ref.shape and (got - ref).abs().max() <= 1e-4


def test_torch_int8_model_exports_as_its_fp32_equivalent(tiny):
    model = torch.ao.quantization.quantize_dynamic(tiny("bert"), {torch.nn.Linear}, torch.qint8)
    fp32 = engine.dequantized_copy(model)
    assert not any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in fp32.modules())
    run = engine.build(model, "onnx", threads=1)
    for batch in _batches("bert"):
        ref = _eager(fp32, batch)
        assert (run(**batch).logits - ref).abs().max() <= 1e-4
        # the dequantized graph computes what torch's int8 kernels approximate
        assert (ref - _eager(model, batch)).abs().max() < 0.05


def test_runtime_int8_model_exports_and_quantizes_with_ort(tiny):
    import copy

    from gearshift.runtime.edits import quantize_int8

    model = quantize_int8(copy.deepcopy(tiny("bert")))
    assert engine.base.has_quantized_linear(model)
    fp32 = engine.dequantized_copy(model)
    assert not engine.base.has_quantized_linear(fp32)
    run = engine.build(model, "onnx", threads=1)
    run8 = engine.build(model, "onnx-int8", threads=1)
    for batch in _batches("bert"):
        ref = _eager(fp32, batch)
        assert (run(**batch).logits - ref).abs().max() <= 1e-4
        assert (run8(**batch).logits - _eager(model, batch)).abs().max() < 0.05


def test_plugin_stack_exports_per_length_bucket(tiny):
    from gearshift.methods.plugins import Plugin, PluginConfig, PluginModel

    base = tiny("bert")
    torch.manual_seed(0)
    plugin = Plugin(PluginConfig(k=4, bottleneck=8, merge="learned"), base)
    with torch.no_grad():
        for p in plugin.parameters():
            p.normal_(std=0.1)
    stack = PluginModel(base)
    stack.add_plugin("k4", plugin)
    setting = {"plugins": "k4"}
    run = engine.build(stack, "onnx", threads=1, setting=setting)
    assert run.mode == "bucketed"  # n/k is fixed when traced
    for batch in _batches("bert"):
        with torch.no_grad(), stack.using(**setting):
            ref = stack(**batch).logits
        with torch.no_grad():
            plain = base(**batch).logits
        assert (ref - plain).abs().max() > 1e-3  # the plugin changes the output
        assert (run(**batch).logits - ref).abs().max() <= 1e-4


def test_onnx_engine_keeps_its_graphs_in_folder(tiny, tmp_path):
    run = OnnxEngine(tiny("distilbert"), threads=1, folder=tmp_path)
    assert run.graph_path() == tmp_path / "model.onnx" and run.graph_path().is_file()


def _randomize(module, seed, scale):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_early_exit_runs_as_segments_with_the_same_exits(tiny, family):
    from gearshift.engine.segments import SegmentedOnnxEngine
    from gearshift.methods.slim.model import Exits
    from gearshift.runtime.stack import Stack

    base = tiny(family)
    stack = Stack(base, {"exits": _randomize(Exits(base.config), 7, 1.0)})
    # a threshold between the rows' entropies, so some rows leave early and some do not
    batch = random_batch(family, 6, 12, seed=3)
    last = base.config.num_layers - 1
    mixed = []
    for threshold in [x / 100 for x in range(2, 110, 2)]:
        with torch.no_grad():
            steps = stack(**batch, setting={"exits": threshold}).exit_step
        if 0 < int((steps < last).sum()) < 6:
            mixed.append(threshold)
    assert mixed, "no threshold lets some rows leave early and others not"
    setting = {"exits": mixed[len(mixed) // 2]}
    run = engine.build(stack, "onnx", threads=1, setting=setting)
    assert isinstance(run, SegmentedOnnxEngine)
    for b in [batch, random_batch(family, 3, 7, seed=4)]:
        with torch.no_grad():
            ref = stack(**b, setting=setting)
        got = run(**b)
        assert torch.equal(got.exit_step, ref.exit_step)
        assert (got.logits - ref.logits).abs().max() <= 1e-4
    assert len(list(run.folder.glob("segment-*.onnx"))) == base.config.num_layers


def test_exits_with_another_provider_on_are_refused_on_onnx(tiny):
    from gearshift.methods.plugins import Plugin, PluginConfig
    from gearshift.methods.plugins.model import Plugins
    from gearshift.methods.slim.model import Exits
    from gearshift.runtime.stack import Stack

    base = tiny("bert")
    plugins = Plugins({"k2": _randomize(Plugin(PluginConfig(k=2), base), 1, 0.3)})
    stack = Stack(base, {"plugins": plugins, "exits": _randomize(Exits(base.config), 7, 1.0)})
    with pytest.raises(ConfigError, match="eager"):
        engine.build(stack, "onnx", setting={"plugins": "k2", "exits": 0.5})


def test_stack_of_an_edited_model_with_a_plugin_exports(tiny):
    import copy

    from gearshift.methods.factorize.model import replace_module
    from gearshift.methods.factorize.modules import LowRankLinear
    from gearshift.methods.plugins import Plugin, PluginConfig
    from gearshift.methods.plugins.model import Plugins
    from gearshift.runtime.stack import Stack

    base = copy.deepcopy(tiny("roberta"))
    replace_module(base, "blocks.1.ffn.inp", _randomize(LowRankLinear(32, 48, rank=4), 2, 0.2))
    cfg = PluginConfig(k=3, placement="layer")
    stack = Stack(base, {"plugins": Plugins({"k3l": _randomize(Plugin(cfg, base), 1, 0.3)})})
    setting = {"plugins": "k3l"}
    run = engine.build(stack, "onnx", threads=1, setting=setting)
    for batch in _batches("roberta"):
        with torch.no_grad():
            ref = stack(**batch, setting=setting).logits
        assert (run(**batch).logits - ref).abs().max() <= 1e-4


def test_segments_of_an_int8_base_run_its_dequantized_graph(tiny):
    """An int8 model (here also with exits) exports as its fp32 equivalent, segments too:
    torch's quantized kernels cannot be traced into ONNX."""
    from gearshift.engine import dequantized_copy
    from gearshift.methods.slim.model import Exits
    from gearshift.runtime import quantize_int8
    from gearshift.runtime.stack import Stack

    base = quantize_int8(tiny("bert"))
    exits = _randomize(Exits(base.config), 7, 1.0)
    stack = Stack(base, {"exits": exits})
    setting = {"exits": 0.5}
    run = engine.build(stack, "onnx", threads=1, setting=setting)
    reference = Stack(dequantized_copy(base), {"exits": exits})
    batch = random_batch("bert", 4, 9, seed=5)
    with torch.no_grad():
        ref = reference(**batch, setting=setting)
    got = run(**batch)
    assert torch.equal(got.exit_step, ref.exit_step)
    assert (got.logits - ref.logits).abs().max() <= 1e-4
