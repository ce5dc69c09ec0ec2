"""Plugins on the real MiniLM-L6 checkpoint and real data: size, FLOPs, padding, CoNLL, CLI."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from gearshift.jobs import TaskData, evaluate
from gearshift.measure import count_parameters, flops_at_length, make_batch
from gearshift.methods.plugins import Plugin, PluginConfig, plugin_flops
from gearshift.methods.plugins.cli import add_cli
from gearshift.runtime import load_pretrained, load_tokenizer, save_model

pytestmark = pytest.mark.integration

ISSUE_SAVING_K4_FFN = 0.434  # the issue's analytic figure: MiniLM-L6, k=4, "ffn", 64-wide restorer


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained("minilm-l6", head_kind="classification", num_labels=2)


def randomize(plugin: Plugin, seed: int = 0, scale: float = 0.05) -> Plugin:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in plugin.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return plugin.eval()


def test_k4_plugin_is_under_one_percent_of_minilm(minilm):
    base = count_parameters(minilm)
    plugin = Plugin(PluginConfig(k=4), minilm)
    assert base == 22_713_986
    # Per layer: merger 4*4*384 + 4, restorer (2*384*24 + 24) + (24*384 + 384); six layers.
    assert plugin.num_parameters() == 6 * (6148 + 18456 + 9600) == 205_224
    assert plugin.num_parameters() / base == pytest.approx(0.009035, abs=1e-6)
    assert plugin.num_parameters() / base <= 0.01
    # The paper's 64-wide restorer would cost 2.1% on a model this small.
    wide = Plugin(PluginConfig(k=4, bottleneck=64), minilm).num_parameters()
    assert wide / base == pytest.approx(0.02122, abs=1e-5)


def test_counted_flops_saving_at_length_128(minilm):
    full = flops_at_length(minilm, 128)
    assert full == 2_869_200_384

    def saving(**kw):
        plugin = Plugin(PluginConfig(**kw), minilm)
        counted = flops_at_length(minilm, 128, plugin.plan())
        assert counted == plugin_flops(minilm.config, plugin.config, 128)
        return 1.0 - counted / full

    paper = saving(k=4, placement="ffn", bottleneck=64)
    assert abs(paper - ISSUE_SAVING_K4_FFN) <= 0.01
    assert paper == pytest.approx(0.4430, abs=1e-4)
    assert saving(k=4, placement="ffn") == pytest.approx(0.4615, abs=1e-4)  # default bottleneck 24
    assert saving(k=4, placement="layer") >= 0.65
    assert saving(k=4, placement="ffn", keep_first_token=True) == pytest.approx(0.4566, abs=1e-4)


def test_real_sentences_padded_or_alone_give_the_same_logits(minilm):
    tok = load_tokenizer("minilm-l6")
    texts = [
        "a gripping, funny and very human story about friendship and loss .",
        "dull .",
        "the film is not as good as the book , but it is close enough to enjoy",
    ]
    for config in (PluginConfig(k=4), PluginConfig(k=4, placement="layer", keep_first_token=True)):
        plugin = randomize(Plugin(config, minilm))
        batch = make_batch(tok, texts, 3)
        with torch.no_grad():
            together = minilm(**batch, plan=plugin.plan()).logits
            for i, text in enumerate(texts):
                alone = minilm(**make_batch(tok, [text], 1), plan=plugin.plan()).logits
                assert torch.allclose(together[i], alone[0], atol=1e-4)


def test_conll_tagging_runs_with_plugins():
    from gearshift.data import get_task

    task = get_task("conll2003")
    model = load_pretrained(
        "minilm-l6", head_kind="token_classification", num_labels=task.num_labels
    )
    tok = load_tokenizer("minilm-l6")
    data = TaskData.load(task, tok, "dev", limit=8)
    batch = next(iter(data.loader(8)))
    labels = batch.pop("labels")
    for placement in ("ffn", "layer"):
        plugin = randomize(Plugin(PluginConfig(k=4, placement=placement), model))
        with torch.no_grad():
            logits = model(**batch, plan=plugin.plan()).logits
        assert logits.shape == (*labels.shape, task.num_labels)
        metrics = evaluate(model, data, plan=plugin.plan())
        assert metrics["examples"] == 8 and 0.0 <= metrics["f1"] <= 100.0


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_trains_stage_a_and_c_and_evaluates(tmp_path, minilm, capsys):
    tok = load_tokenizer("minilm-l6")
    teacher = tmp_path / "teacher"
    save_model(
        minilm,
        teacher,
        tokenizer=tok,
        extra={"task": {"name": "sst2", "kind": "classification", "label_names": ["0", "1"]}},
    )
    text = tmp_path / "text.txt"
    text.write_text("The plugin merges tokens.\nIt restores them afterwards.\n" * 4)
    common = ["--max-steps", "2", "--batch-size", "4", "--no-progress", "--k", "4"]
    assert (
        run_cli(
            [
                "plugin",
                "train",
                "--stage",
                "A",
                "--model",
                "minilm-l6",
                "--text",
                str(text),
                "--output",
                str(tmp_path / "a"),
                *common,
            ]
        )
        == 0
    )
    stage_a = tmp_path / "a" / "plugin"
    assert json.loads((stage_a / "gearshift.json").read_text())["training"]["stage"] == "A"
    assert (
        run_cli(
            [
                "plugin",
                "train",
                "--stage",
                "C",
                "--model",
                str(teacher),
                "--init",
                str(stage_a),
                "--train-limit",
                "8",
                "--dev-limit",
                "8",
                "--kl",
                "--output",
                str(tmp_path / "c"),
                *common,
            ]
        )
        == 0
    )
    meta = json.loads((tmp_path / "c" / "plugin" / "gearshift.json").read_text())
    assert meta["training"]["task"] == "sst2" and meta["training"]["kl_weight"] == 1.0
    assert meta["config"]["base_model"]["source"] == "minilm-l6"
    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert (
        run_cli(
            [
                "plugin",
                "eval",
                "--model",
                str(teacher),
                "--plugin",
                str(tmp_path / "c" / "plugin"),
                "--limit",
                "8",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in rows] == ["none", "k4-ffn"]
    assert rows[0]["flops_saved_128"] == 0.0 and rows[1]["flops_saved_128"] > 0.43
    assert "| - | none |" in capsys.readouterr().out
