"""`gearshift export`: ONNX and Hugging Face folders, and what HF cannot hold."""

from __future__ import annotations

import copy
import json

import onnxruntime  # noqa: E402,F401  (a hard dependency: a missing one fails, never skips)
import pytest
import torch
from conftest import FAMILIES, random_batch  # noqa: E402

from gearshift.engine.export import (  # noqa: E402
    export_hf_folder,
    export_onnx_folder,
    load_onnx_export,
)
from gearshift.engine.hf import why_not_hf  # noqa: E402
from gearshift.errors import ConfigError  # noqa: E402
from gearshift.runtime import BlockShape, Transformer, load_hf, save_model  # noqa: E402


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_folder_loads_in_transformers_and_equals_gearshift(hf_tiny_dir, tmp_path, family):
    from transformers import AutoModelForSequenceClassification

    model = load_hf(str(hf_tiny_dir(family, "classification")))
    # a different model from the source checkpoint: the export must carry gearshift's weights
    with torch.no_grad():
        model.head.out.weight.mul_(3.0)
    folder = export_hf_folder(model, tmp_path / "hf")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    hf = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    for b, n in [(3, 11), (2, 6)]:
        batch = random_batch(family, b, n, seed=b)
        ref = _logits(model, batch)
        assert (_logits(hf, batch) - ref).abs().max() <= 1e-5


def test_hf_regression_head(hf_tiny_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = load_hf(str(hf_tiny_dir("bert", "classification")))
    model.set_head("regression", 1)
    torch.nn.init.normal_(model.head.out.weight, std=0.5)
    model.eval()
    folder = export_hf_folder(model, tmp_path / "hf")
    hf = AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    assert hf.config.problem_type == "regression"
    batch = random_batch("bert")
    assert (_logits(hf, batch).squeeze(-1) - _logits(model, batch)).abs().max() <= 1e-5


def test_hf_holds_a_uniformly_narrower_ffn(hf_tiny_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = load_hf(str(hf_tiny_dir("roberta", "classification")))
    config = copy.deepcopy(model.config)
    config.blocks = [BlockShape(4, 16)] * 3
    torch.manual_seed(0)
    narrow = Transformer(config).eval()
    assert why_not_hf(narrow) is None
    hf = AutoModelForSequenceClassification.from_pretrained(
        str(export_hf_folder(narrow, tmp_path / "hf"))
    ).eval()
    assert hf.config.intermediate_size == 16
    batch = random_batch("roberta")
    assert (_logits(hf, batch) - _logits(narrow, batch)).abs().max() <= 1e-5


def _edited(hf_tiny_dir, edit):
    model = load_hf(str(hf_tiny_dir("bert", "classification")))
    config = copy.deepcopy(model.config)
    edit(config)
    return Transformer(config).eval()


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda c: setattr(c, "blocks", [BlockShape(2, 48)] * 3), "pruned"),
        (
            lambda c: setattr(
                c, "blocks", [BlockShape(4, 48), BlockShape(4, 16), BlockShape(4, 8)]
            ),
            "FFN widths",
        ),
        (
            lambda c: (setattr(c, "layer_to_block", [0, 0, 1]), setattr(c, "blocks", c.blocks[:2])),
            "share",
        ),
        (lambda c: setattr(c, "word_rank", 8), "low rank"),
    ],
)
def test_hf_refuses_what_it_cannot_hold(hf_tiny_dir, tmp_path, edit, reason):
    model = _edited(hf_tiny_dir, edit)
    assert reason in why_not_hf(model)
    with pytest.raises(ConfigError, match=reason):
        export_hf_folder(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_hf_refuses_low_rank_linears(hf_tiny_dir, tmp_path):
    from gearshift.methods.factorize.model import replace_module
    from gearshift.methods.factorize.modules import LowRankLinear

    model = load_hf(str(hf_tiny_dir("bert", "classification")))
    replace_module(model, "blocks.0.ffn.inp", LowRankLinear(32, 48, rank=4))
    with pytest.raises(ConfigError, match="LowRankLinear"):
        export_hf_folder(model, tmp_path / "hf")


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_onnx_folder_round_trip(hf_tiny_dir, tmp_path, family):
    model = load_hf(str(hf_tiny_dir(family, "classification")))
    folder = export_onnx_folder(model, tmp_path / "onnx", source="tiny")
    meta = json.loads((folder / "gearshift.json").read_text())
    assert meta["kind"] == "onnx-export" and meta["source"] == "tiny" and meta["opset"] == 17
    assert (folder / "model.onnx").is_file()
    run = load_onnx_export(folder, threads=1)
    for b, n in [(3, 11), (4, 20)]:
        batch = random_batch(family, b, n, seed=n)
        assert (run(**batch).logits - _logits(model, batch)).abs().max() <= 1e-4


def test_export_cli_writes_both_formats(hf_tiny_dir, tmp_path):
    from gearshift.cli import main

    model = load_hf(str(hf_tiny_dir("distilbert", "classification")))
    src = save_model(model, tmp_path / "model")
    assert (
        main(["export", "--model", str(src), "--format", "onnx", "--output", str(tmp_path / "o")])
        == 0
    )
    assert (
        main(["export", "--model", str(src), "--format", "hf", "--output", str(tmp_path / "h")])
        == 0
    )
    assert (tmp_path / "o" / "model.onnx").is_file()
    assert (tmp_path / "h" / "config.json").is_file()


def test_hf_refuses_a_stack_and_says_to_export_its_base(hf_tiny_dir, tmp_path):
    from gearshift.methods.slim.model import Exits
    from gearshift.runtime.stack import Stack

    base = load_hf(str(hf_tiny_dir("bert", "classification")))
    stack = Stack(base, {"exits": Exits(base.config)})
    with pytest.raises(ConfigError, match="export its base model"):
        export_hf_folder(stack, tmp_path / "hf")


def test_onnx_folder_of_a_plugin_setting_holds_one_graph_per_bucket(hf_tiny_dir, tmp_path):
    from gearshift.methods.plugins import Plugin, PluginConfig, PluginModel

    base = load_hf(str(hf_tiny_dir("distilbert", "classification")))
    torch.manual_seed(0)
    plugin = Plugin(PluginConfig(k=4, bottleneck=8), base)
    with torch.no_grad():
        for p in plugin.parameters():
            p.normal_(std=0.1)
    stack = PluginModel(base)
    stack.add_plugin("k4", plugin)
    setting = {"plugins": "k4"}
    folder = export_onnx_folder(stack, tmp_path / "onnx", setting=setting, max_length=32)
    meta = json.loads((folder / "gearshift.json").read_text())
    assert meta["graphs"] == {"16": "model-n16.onnx", "32": "model-n32.onnx"}
    assert meta["setting"] == setting and meta["bucket"] == 16
    assert sorted(p.name for p in folder.glob("*.onnx")) == ["model-n16.onnx", "model-n32.onnx"]
    run = load_onnx_export(folder, threads=1)
    for b, n in [(3, 11), (2, 30)]:
        batch = random_batch("distilbert", b, n, seed=n)
        with torch.no_grad(), stack.using(**setting):
            ref = stack(**batch).logits
        assert (run(**batch).logits - ref).abs().max() <= 1e-4
    with pytest.raises(ConfigError, match="longer than"):
        run(**random_batch("distilbert", 1, 40))


def test_onnx_export_of_a_torch_int8_model_is_ort_int8(hf_tiny_dir, tmp_path):
    import onnx

    from gearshift.runtime.edits import quantize_int8
    from gearshift.runtime.io import load_model

    model = quantize_int8(load_hf(str(hf_tiny_dir("bert", "classification"))))
    saved = load_model(save_model(model, tmp_path / "int8"))  # the folder round trip too
    folder = export_onnx_folder(saved, tmp_path / "onnx")
    meta = json.loads((folder / "gearshift.json").read_text())
    assert meta["engine"] == "onnx-int8" and "torch int8" in meta["int8"]
    graph = folder / meta["graphs"]["any"]
    assert "MatMulInteger" in {n.op_type for n in onnx.load(str(graph)).graph.node}
    batch = random_batch("bert")
    got = load_onnx_export(folder, threads=1)(**batch).logits
    assert (got - _logits(saved, batch)).abs().max() < 0.05
