"""gearshift.measure: FLOPs (counted == analytic), parameters, latency, memory, reports."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import pytest
import torch
from torch import nn

from gearshift.measure import (
    OperatingPoint,
    analytic_flops,
    attention_flops,
    compare_latency,
    count_flops,
    count_parameters,
    fixed_length_batch,
    flops_at_length,
    flops_per_example,
    forward_fn,
    machine_description,
    make_batch,
    markdown_table,
    measure_latency,
    parameter_breakdown,
    parameter_bytes,
    pareto_frontier,
    peak_memory,
    plot_tradeoff,
    profile_markdown,
    profile_model,
    read_results,
    write_results,
)
from gearshift.runtime import BlockShape, ForwardPlan, ModelConfig, Step, Transformer
from gearshift.runtime.modules import EXPLICIT_ATTENTION


# ---------------------------------------------------------------------- tiny models
def bert_like(**kw) -> ModelConfig:
    base = dict(
        family="bert",
        vocab_size=60,
        hidden_size=32,
        num_layers=3,
        num_heads=4,
        intermediate_size=48,
        max_positions=160,
        type_vocab_size=2,
        head={"kind": "classification", "num_labels": 3},
    )
    base.update(kw)
    return ModelConfig.uniform(**base)


def heterogeneous() -> ModelConfig:
    """Blocks of different widths, one with every head and neuron pruned."""
    return ModelConfig(
        family="bert",
        vocab_size=50,
        hidden_size=16,
        num_layers=3,
        head_dim=4,
        blocks=[BlockShape(4, 32), BlockShape(2, 8), BlockShape(0, 0)],
        layer_to_block=[0, 1, 2],
        max_positions=32,
        type_vocab_size=2,
        head={"kind": "classification", "num_labels": 2},
    )


def albert_like() -> ModelConfig:
    """Factorized embeddings (E=8 -> d=16), 4 layers sharing 2 blocks, token head."""
    return ModelConfig(
        family="albert",
        vocab_size=50,
        hidden_size=16,
        num_layers=4,
        head_dim=4,
        embedding_size=8,
        blocks=[BlockShape(4, 24), BlockShape(4, 24)],
        layer_to_block=[0, 0, 1, 1],
        max_positions=32,
        type_vocab_size=2,
        head={"kind": "token_classification", "num_labels": 5},
    )


def gpt2_like() -> ModelConfig:
    return ModelConfig(
        family="gpt2",
        vocab_size=40,
        hidden_size=16,
        num_layers=2,
        head_dim=4,
        blocks=[BlockShape(4, 64), BlockShape(4, 64)],
        layer_to_block=[0, 1],
        max_positions=32,
        causal=True,
        norm_position="pre",
        embedding_norm=False,
        final_norm=True,
        head={"kind": "lm"},
    )


def build(config: ModelConfig) -> Transformer:
    torch.manual_seed(0)
    return Transformer(config).eval()


def padded_batch(config: ModelConfig, batch: int = 3, length: int = 12) -> dict:
    out = fixed_length_batch(config, length, batch)
    for row in range(1, batch):  # real padding in every row but the first
        out["attention_mask"][row, length - 3 * row :] = 0
    return out


def with_word_rank(make, rank: int = 5):
    def config() -> ModelConfig:
        c = make()
        c.word_rank = rank
        return c

    return config


CONFIGS = {
    "bert": bert_like,
    "heterogeneous": heterogeneous,
    "albert": albert_like,
    "gpt2-lm": gpt2_like,
    "bert-word-rank": with_word_rank(bert_like),
    "gpt2-lm-word-rank": with_word_rank(gpt2_like),
}


# ---------------------------------------------------------------------- FLOPs
@pytest.mark.parametrize("name", list(CONFIGS))
def test_counted_flops_equal_analytic(name):
    config = CONFIGS[name]()
    model = build(config)
    batch = padded_batch(config)
    counted = count_flops(model, batch)
    expected = analytic_flops(config, seq_len=12, batch=3)
    assert counted == pytest.approx(expected, rel=0.01)
    assert counted == expected  # in fact exact


def test_analytic_flops_by_hand():
    # One layer, d=8, 2 heads of 4, FFN 16, no head, n=5:
    # QKVO 4*2*5*8*8 = 2560; scores+values 2*2*5*5*2*4 = 800; FFN 2*2*5*8*16 = 2560.
    config = ModelConfig.uniform(
        family="bert",
        vocab_size=10,
        hidden_size=8,
        num_layers=1,
        num_heads=2,
        intermediate_size=16,
        max_positions=8,
    )
    assert analytic_flops(config, 5) == 2560 + 800 + 2560
    assert attention_flops(config, 5) == 800
    assert analytic_flops(config, 5, batch=3) == 3 * (2560 + 800 + 2560)
    assert count_flops(build(config), fixed_length_batch(config, 5)) == 2560 + 800 + 2560


def test_shared_block_counts_once_per_layer_that_runs_it():
    shared = albert_like()
    unshared = dataclasses.replace(
        shared, blocks=[BlockShape(4, 24)] * 4, layer_to_block=[0, 1, 2, 3]
    )
    assert analytic_flops(shared, 10) == analytic_flops(unshared, 10)
    assert count_flops(build(shared), fixed_length_batch(shared, 10)) == analytic_flops(shared, 10)


def test_pruned_widths_cost_less():
    full = dataclasses.replace(heterogeneous(), blocks=[BlockShape(4, 32)] * 3)
    assert analytic_flops(heterogeneous(), 10) < analytic_flops(full, 10)


def test_fused_attention_hides_exactly_the_attention_matmuls():
    """Why EXPLICIT_ATTENTION exists: FlopCounterMode does not see the fused CPU kernel."""
    for make in (bert_like, heterogeneous, gpt2_like):
        config = make()
        model = build(config)
        batch = padded_batch(config)
        explicit = count_flops(model, batch)
        fused = count_flops(model, batch, explicit_attention=False)
        missing = attention_flops(config, seq_len=12, batch=3)
        assert missing > 0
        assert explicit - fused == missing


def test_count_flops_restores_switch_mode_and_grad():
    model = build(heterogeneous())
    model.train()
    count_flops(model, fixed_length_batch(model.config, 6))
    assert EXPLICIT_ATTENTION.get() is False
    assert model.training
    assert all(p.requires_grad for p in model.parameters())


def test_count_flops_drops_labels_and_accepts_lists():
    config = bert_like()
    model = build(config)
    batch = {k: v.tolist() for k, v in fixed_length_batch(config, 7, 2).items()}
    batch["labels"] = [0, 1]
    assert count_flops(model, batch) == analytic_flops(config, 7, 2)


def test_flops_per_example_is_the_mean_over_examples():
    config = bert_like()
    model = build(config)
    lengths = [5, 9, 9, 14]
    batches = [fixed_length_batch(config, n) for n in lengths]
    expected = sum(analytic_flops(config, n) for n in lengths) / len(lengths)
    assert flops_per_example(model, batches) == pytest.approx(expected, rel=1e-12)
    # One padded batch of 4 at length 14 costs the padding too.
    padded = padded_batch(config, batch=4, length=14)
    assert flops_per_example(model, [padded]) == analytic_flops(config, 14)


def test_flops_per_example_caches_by_shape_only_without_plan():
    config = bert_like()
    model = build(config)
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    batches = [fixed_length_batch(config, 8, 2) for _ in range(3)]
    flops_per_example(model, batches)
    assert len(calls) == 1
    exits = []
    plan = ForwardPlan(exit=lambda layer, h, mask, rows: exits.append(layer))
    flops_per_example(model, batches, plan)
    assert len(calls) == 1 + 3
    assert len(exits) == 3 * (config.num_layers - 1)
    handle.remove()


def test_flops_follow_the_plan():
    """A plan that runs fewer steps, or lets rows exit, costs what actually ran."""
    config = bert_like()
    model = build(config)
    batch = fixed_length_batch(config, 10, 4)
    one_layer = dataclasses.replace(config, num_layers=1, layer_to_block=[0])
    short = ForwardPlan(steps=[Step(block=0, layer=0)])
    assert count_flops(model, batch, short) == analytic_flops(one_layer, 10, 4)

    # Rows 0 and 1 exit after the first layer: they skip two of three layers.
    def leave(layer, h, mask, rows):
        return (rows < 2) if layer == 0 else None

    full = analytic_flops(config, 10)
    per_layer = (
        full - analytic_flops(dataclasses.replace(config, num_layers=0, layer_to_block=[]), 10)
    ) // 3
    expected = 4 * full - 2 * 2 * per_layer
    assert count_flops(model, batch, ForwardPlan(exit=leave)) == expected
    assert flops_per_example(model, [batch], ForwardPlan(exit=leave)) == expected / 4


def test_flops_at_length():
    config = bert_like()
    model = build(config)
    assert flops_at_length(model, 128) == analytic_flops(config, 128)
    with pytest.raises(ValueError, match="positions"):
        flops_at_length(model, 1000)


# ---------------------------------------------------------------------- parameters
def test_count_parameters_and_bytes():
    model = build(bert_like())
    manual = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == manual
    assert parameter_bytes(model) == 4 * manual
    assert parameter_bytes(model.half()) == 2 * manual


def test_shared_blocks_count_once():
    shared = build(albert_like())
    unshared = build(
        dataclasses.replace(
            albert_like(), blocks=[BlockShape(4, 24)] * 4, layer_to_block=[0, 1, 2, 3]
        )
    )
    one_block = count_parameters(shared.blocks[0])
    assert one_block > 0
    assert count_parameters(unshared) - count_parameters(shared) == 2 * one_block


def test_tied_weights_count_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 6, bias=False)
            self.b = nn.Linear(4, 6, bias=False)
            self.b.weight = self.a.weight  # the same Parameter object
            self.c = nn.Linear(4, 6, bias=False)
            self.c.weight = nn.Parameter(self.a.weight.data)  # another Parameter, same storage

    assert count_parameters(Tied()) == 24
    assert parameter_bytes(Tied()) == 96


def test_trainable_only_and_breakdown():
    model = build(bert_like())
    emb = sum(p.numel() for p in model.embeddings.parameters())
    for p in model.embeddings.parameters():
        p.requires_grad_(False)
    total = count_parameters(model)
    assert count_parameters(model, trainable_only=True) == total - emb
    bd = parameter_breakdown(model)
    assert bd["embeddings"] == emb
    assert bd["heads"] == sum(p.numel() for p in model.head.parameters())
    assert bd["blocks"] == sum(bd["per_block"])
    assert bd["total"] == total
    assert bd["other"] == 0


def test_buffers_count_in_weight_bytes_when_asked():
    model = build(bert_like())
    model.register_buffer("codebook", torch.zeros(100, dtype=torch.float32))
    assert parameter_bytes(model, include_buffers=True) == parameter_bytes(model) + 400


# ---------------------------------------------------------------------- latency
def sleeper(ms: float, log: list | None = None, name: str = ""):
    def fn(batch):
        if log is not None:
            log.append(name)
        time.sleep(ms / 1000)

    return fn


def test_measure_latency_stats_and_threads_restored():
    before = torch.get_num_threads()
    seen = []
    batch = {"input_ids": torch.zeros(3, 4, dtype=torch.long)}

    def fn(b):
        seen.append(torch.get_num_threads())
        time.sleep(0.002)

    stats = measure_latency(fn, batch, warmup=2, repeats=7, threads=1)
    assert len(seen) == 9 and set(seen) == {1}
    assert torch.get_num_threads() == before
    assert stats.repeats == 7 and stats.batch_size == 3 and stats.threads == 1
    assert stats.median_ms >= 2.0 and stats.p90_ms >= stats.median_ms and stats.mean_ms > 0


def test_compare_latency_interleaves_and_gives_ratios():
    log: list[str] = []
    batch = {"input_ids": torch.zeros(1, 4, dtype=torch.long)}
    cands = {"a": sleeper(1, log, "a"), "b": sleeper(4, log, "b"), "c": sleeper(1, log, "c")}
    cmp = compare_latency(cands, batch, reference="a", warmup=1, repeats=4)
    assert log == ["a", "b", "c"] * 5
    assert cmp.reference == "a" and cmp.ratios["a"] == 1.0
    assert cmp.ratios["b"] > 1.0
    assert cmp.ratios["b"] == cmp.stats["b"].median_ms / cmp.stats["a"].median_ms
    assert all(s.repeats == 4 for s in cmp.stats.values())
    with pytest.raises(KeyError, match="reference"):
        compare_latency(cands, batch, reference="zzz")


def test_forward_fn_runs_the_model_with_plan():
    config = bert_like()
    model = build(config)
    batch = {**fixed_length_batch(config, 6, 2), "labels": torch.tensor([0, 1])}
    plan = ForwardPlan(steps=[Step(block=0, layer=0)])
    with torch.no_grad():
        out = forward_fn(model, plan)(batch)
        ref = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], plan=plan)
    assert torch.equal(out.logits, ref.logits)


# ---------------------------------------------------------------------- memory
def test_peak_memory_grows_with_batch_and_holds_the_output():
    config = bert_like()
    model = build(config)
    fn = forward_fn(model)
    small = peak_memory(fn, fixed_length_batch(config, 64, 1), model=model)
    big = peak_memory(fn, fixed_length_batch(config, 64, 32), model=model)
    assert small.method == big.method == "cpu-profiler"
    assert small.weights_bytes == big.weights_bytes == parameter_bytes(model)
    assert big.peak_bytes > small.peak_bytes
    hidden_bytes = 32 * 64 * config.hidden_size * 4
    assert big.activations_bytes >= hidden_bytes
    assert big.peak_bytes == big.weights_bytes + big.activations_bytes


# ---------------------------------------------------------------------- reports
def row(method: str, setting: str, score: float, flops: float, **kw) -> OperatingPoint:
    return OperatingPoint(
        task="sst2",
        model="tiny",
        method=method,
        setting=setting,
        metric="accuracy",
        score=score,
        flops_dynamic=flops,
        **kw,
    )


def test_operating_point_fields_are_the_record_format():
    names = [f.name for f in dataclasses.fields(OperatingPoint)]
    assert names == [
        "task",
        "model",
        "method",
        "setting",
        "metric",
        "score",
        "flops_dynamic",
        "flops_128",
        "params",
        "latency_ratio_b1",
        "latency_ratio_b32",
        "reference_score",
        "command",
        "date",
        "machine",
        "extras",
        "seed",
    ]
    r = row("base", "-", 0.9, 1e9)
    assert r.seed is None  # a row says which seed it ran with only when it knows
    assert OperatingPoint.from_dict({**r.to_dict(), "seed": 43}).seed == 43  # kept top-level
    assert r.date[:2] == "20" and "torch" in r.machine and r.command


def test_write_and_read_results(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    rows = [
        row("base", "-", 0.91, 2.9e9, params=22_000_000, extras={"latency_ms_b1": 4.0}),
        row("plugins", "k=2", 0.90, 1.6e9),
    ]
    path = write_results(results / "one.json", rows, "one")
    write_results(results / "sub" / "two.json", [row("slim", "50%", 0.88, 1.0e9).to_dict()], "two")
    (results / "notes.json").write_text(json.dumps({"hello": 1}))
    data = json.loads(path.read_text())
    assert data["benchmark"] == "one" and len(data["rows"]) == 2
    assert data["rows"][0]["extras"] == {"latency_ms_b1": 4.0}
    assert sorted(p.name for p in results.rglob("*")) == [
        "notes.json",
        "one.json",
        "sub",
        "two.json",
    ]
    back = read_results(results)
    assert [r.method for r in back] == ["base", "plugins", "slim"]
    assert back[0].score == 0.91 and back[0].params == 22_000_000
    assert back[0].extras["benchmark"] == "one" and back[2].extras["benchmark"] == "two"
    # Overwriting replaces the file whole.
    write_results(path, rows[:1], "one")
    assert len(json.loads(path.read_text())["rows"]) == 1
    old = os.umask(0o022)
    try:
        write_results(path, rows, "one")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # as any file the user writes, not 0600
    (results / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        read_results(results)


def test_markdown_table_formats_units():
    rows = [
        row(
            "base",
            "-",
            0.91234,
            2.87e9,
            flops_128=4.5e7,
            params=22_713_216,
            latency_ratio_b1=1.0,
            latency_ratio_b32=0.8765,
            extras={"latency_ms_b1": 12.3456},
        )
    ]
    table = markdown_table(
        rows,
        [
            "method",
            "score",
            "flops_dynamic",
            "flops_128",
            "params",
            "latency_ratio_b32",
            "latency_ms_b1",
            "reference_score",
        ],
    )
    lines = table.strip().splitlines()
    assert lines[0] == (
        "| method | score | flops_dynamic | flops_128 | params | latency_ratio_b32 "
        "| latency_ms_b1 | reference_score |"
    )
    assert lines[2] == "| base | 0.9123 | 2.87 GFLOPs | 45.0 MFLOPs | 22.71M | 0.88 | 12.35 | - |"
    assert "| task |" in markdown_table(rows)  # default columns


def test_pareto_frontier():
    rows = [
        row("a", "1", 0.80, 1e9),
        row("a", "2", 0.85, 2e9),
        row("b", "1", 0.82, 2e9),
        row("b", "2", 0.84, 3e9),
        row("c", "1", 0.90, 4e9),
        row("c", "2", 0.95, None),
    ]
    front = pareto_frontier(rows)
    assert [(r.method, r.setting) for r in front] == [("a", "1"), ("a", "2"), ("c", "1")]
    dicts = [r.to_dict() for r in rows]
    assert [r["setting"] for r in pareto_frontier(dicts, cost="flops_dynamic")] == ["1", "2", "1"]


def test_plot_tradeoff_writes_a_png(tmp_path):
    rows = [row("a", "1", 0.80, 1e9), row("a", "2", 0.85, 2e9), row("b", "1", 0.82, 3e9)]
    path = plot_tradeoff(rows, tmp_path / "plots" / "tradeoff.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plot_tradeoff_with_more_series_than_colours_widens_for_the_legend(tmp_path):
    """Past ten series (the default colour cycle) every series keeps its own colour and the
    legend moves beside the axes: the figure is wider than the few-series one."""
    from PIL import Image

    few = plot_tradeoff([row("a", "1", 0.8, 1e9)], tmp_path / "few.png")
    many = [row(f"m{i}", "1", 0.8 + i / 100, (i + 1) * 1e9) for i in range(12)]
    path = plot_tradeoff(many, tmp_path / "many.png")
    assert Image.open(path).size[0] > Image.open(few).size[0]


def test_machine_description():
    text = machine_description()
    assert f"torch {torch.__version__}" in text and "cores" in text


# ---------------------------------------------------------------------- profile
class WordTokenizer:
    """A tiny stand-in tokenizer: one id per whitespace word, [CLS]=1 ... [SEP]=2, pad 0."""

    def __call__(
        self,
        texts,
        pairs=None,
        truncation=True,
        max_length=128,
        padding="longest",
        return_tensors="pt",
    ):
        rows = [[1] + [3 + len(w) % 40 for w in t.split()][: max_length - 2] + [2] for t in texts]
        width = max_length if padding == "max_length" else max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def test_make_batch_pads_dynamically_or_to_fixed_length():
    tok = WordTokenizer()
    texts = ["a b c", "d e", "f g h i j"]
    dyn = make_batch(tok, texts, 4)
    assert dyn["input_ids"].shape == (4, 7)
    assert dyn["attention_mask"].sum(1).tolist() == [5, 4, 7, 5]  # texts cycled
    fixed = make_batch(tok, texts, 2, pad_to=16)
    assert fixed["input_ids"].shape == (2, 16)


def test_profile_model_on_a_tiny_model():
    config = bert_like()
    model = build(config)
    texts = ["one two three", "four five", "six seven eight nine ten eleven"]
    d = profile_model(
        model, WordTokenizer(), texts, batch_sizes=(1, 4), seq_len=16, warmup=1, repeats=3
    )
    json.dumps(d)  # serialisable
    lengths = [5, 4, 8]
    assert d["flops"]["per_example_dynamic"] == pytest.approx(
        sum(analytic_flops(config, n) for n in lengths) / 3
    )
    assert d["flops"]["per_example_at_length"] == analytic_flops(config, 16)
    assert d["params"]["total"] == count_parameters(model)
    assert d["latency"]["b4"]["batch_size"] == 4 and d["latency"]["b4"]["padded_length"] == 8
    assert d["memory"]["b4"]["peak_bytes"] > d["memory"]["b1"]["peak_bytes"]
    md = profile_markdown(d)
    assert "| 4 | 8 |" in md and "FLOPs per example" in md


# ---------------------------------------------------------------------- the real MiniLM
@pytest.fixture(scope="module")
def minilm():
    from gearshift.runtime import load_pretrained, load_tokenizer

    return load_pretrained("minilm-l6", head_kind="classification", num_labels=2), load_tokenizer(
        "minilm-l6"
    )


@pytest.mark.integration
def test_minilm_flops_at_128_match_analytic(minilm):
    model, _ = minilm
    counted = flops_at_length(model, 128)
    analytic = analytic_flops(model.config, 128)
    assert counted == pytest.approx(analytic, rel=0.01)
    assert counted == analytic
    # 6 layers x (QKVO 4*2*128*384*384 + FFN 2*2*128*384*1536 + attention 4*128*128*384)
    # + head (2*384*384 + 2*384*2) = 2.869 GFLOPs.
    assert counted == 2_869_200_384


@pytest.mark.integration
def test_minilm_parameters(minilm):
    from transformers import AutoModel

    from gearshift.paths import resolve_model_name

    model, _ = minilm
    hf = AutoModel.from_pretrained(resolve_model_name("minilm-l6"))
    # HF's BertModel includes the pooler (384*384 + 384), which is our classification head's
    # dense layer; our head adds the 2-way output layer (384*2 + 2).
    assert count_parameters(hf) == 22_713_216
    assert count_parameters(model) == 22_713_216 + 384 * 2 + 2
    bd = parameter_breakdown(model)
    assert bd["embeddings"] == (30522 + 512 + 2) * 384 + 2 * 384


@pytest.mark.integration
def test_minilm_make_batch_and_memory(minilm):
    model, tok = minilm
    texts = [
        "it 's a charming and often affecting journey . ",
        "unflinchingly bleak and desperate ",
    ]
    fixed = make_batch(tok, texts, 3, pad_to=128)
    assert fixed["input_ids"].shape == (3, 128)
    assert fixed["attention_mask"][0].sum() == len(tok(texts[0])["input_ids"])
    dyn = make_batch(tok, texts, 2)
    assert dyn["input_ids"].shape[1] == len(tok(texts[0])["input_ids"])
    fn = forward_fn(model)
    b1 = peak_memory(fn, make_batch(tok, texts, 1, pad_to=128), model=model)
    b8 = peak_memory(fn, make_batch(tok, texts, 8, pad_to=128), model=model)
    assert b8.peak_bytes > b1.peak_bytes
    assert b8.activations_bytes >= 8 * 128 * 384 * 4
    assert b1.weights_bytes == 4 * count_parameters(model)


def test_results_sink_replaces_rows_and_survives_restarts(tmp_path):
    from gearshift.measure import ResultsSink

    path = tmp_path / "b.json"
    row = lambda method, score: OperatingPoint(  # noqa: E731
        task="rte", model="m", method=method, setting="s", metric="accuracy", score=score
    ).to_dict()
    sink = ResultsSink(path, "bench")
    sink.add(row("a", 1.0))
    sink.add([row("b", 2.0), row("a", 3.0)])
    again = ResultsSink(path, "bench")  # a restarted run sees what was written
    assert {r["method"]: r["score"] for r in again.rows} == {"a": 3.0, "b": 2.0}
    assert again.has("rte", "a", "s") and not again.has("rte", "c", "s")
    assert again.new == [] and len(sink.new) == 3
    assert ResultsSink(path, "other").rows == []


def test_results_sink_keeps_runs_of_other_seeds_side_by_side(tmp_path):
    from gearshift.measure import ResultsSink

    path = tmp_path / "b.json"

    def row(score, seed):
        point = OperatingPoint(
            task="rte", model="m", method="a", setting="s", metric="accuracy", score=score
        )
        point.seed = seed
        return point.to_dict()

    sink = ResultsSink(path, "bench")
    sink.add([row(1.0, 42), row(2.0, 43)])
    sink.add(row(3.0, 43))  # a re-run of seed 43 replaces seed 43 only
    got = {r["seed"]: r["score"] for r in ResultsSink(path, "bench").rows}
    assert got == {42: 1.0, 43: 3.0}
    assert sink.has("rte", "a", "s", seed=43) and not sink.has("rte", "a", "s", seed=44)
    sink.add(row(4.0, None))  # a row that does not know its seed replaces every seed
    assert [(r["seed"], r["score"]) for r in ResultsSink(path, "bench").rows] == [(None, 4.0)]
    sink.add(row(5.0, 44))  # and a seeded run replaces the unknown one
    assert [(r["seed"], r["score"]) for r in ResultsSink(path, "bench").rows] == [(44, 5.0)]


def test_results_sink_dates_undated_rows_when_they_are_written(tmp_path, monkeypatch):
    """A row added without a date gets the time it was written, and keeps it when a later
    run re-reads and rewrites the file (it used to take the later run's time)."""
    from gearshift.measure import ResultsSink
    from gearshift.measure import report as measure_report

    path = tmp_path / "b.json"
    row = OperatingPoint(
        task="rte", model="m", method="a", setting="s", metric="accuracy", score=1.0
    ).to_dict()
    del row["date"]
    monkeypatch.setattr(measure_report, "now_iso", lambda: "2026-01-01T00:00:00+00:00")
    ResultsSink(path, "bench").add(row)
    monkeypatch.setattr(measure_report, "now_iso", lambda: "2026-06-01T00:00:00+00:00")
    later = dict(row, method="b", date="2026-06-01T00:00:00+00:00")
    ResultsSink(path, "bench").add(later)  # another run re-reads and rewrites the file
    dates = {r["method"]: r["date"] for r in ResultsSink(path, "bench").rows}
    assert dates == {"a": "2026-01-01T00:00:00+00:00", "b": "2026-06-01T00:00:00+00:00"}


def test_results_sinks_of_two_concurrent_runs_keep_each_others_rows(tmp_path):
    from gearshift.measure import ResultsSink

    path = tmp_path / "b.json"
    row = lambda method, score: OperatingPoint(  # noqa: E731
        task="sst2", model="m", method=method, setting="s", metric="accuracy", score=score
    ).to_dict()
    first, second = ResultsSink(path, "bench"), ResultsSink(path, "bench")  # both start empty
    first.add(row("naive", 1.0))
    second.add([row("step-aware", 2.0), row("teacher", 5.0)])
    first.add(row("teacher", 6.0))  # the same key from both: the latest write wins
    rows = {r["method"]: r["score"] for r in ResultsSink(path, "bench").rows}
    assert rows == {"naive": 1.0, "step-aware": 2.0, "teacher": 6.0}


def test_mcnemar_counts_only_disagreements_on_correctness():
    from gearshift.errors import ConfigError
    from gearshift.measure import decode_labels, encode_labels, mcnemar

    labels = [0, 1, 1, 0, 1, 0, 1, 1]
    a = [0, 1, 1, 0, 1, 0, 0, 0]  # wrong on the last two
    b = [1, 0, 1, 0, 1, 0, 1, 1]  # wrong on the first two
    test = mcnemar(a, b, labels)
    assert (test.a_only, test.b_only) == (2, 2) and test.p_value == 1.0 and not test.better()
    test = mcnemar([1] * 12, [0] * 12, [1] * 12)
    assert (test.a_only, test.b_only) == (12, 0)
    assert test.p_value == pytest.approx(2 * 0.5**12) and test.better()
    assert not test.better(alpha=1e-4)
    assert mcnemar([1, 0], [1, 0], [1, 1]).p_value == 1.0  # no disagreement at all
    with pytest.raises(ConfigError, match="same examples"):
        mcnemar([1, 0], [1], [1, 0])
    assert decode_labels(encode_labels([3, 0, 9])) == [3, 0, 9]
    with pytest.raises(ConfigError, match="0-9"):
        encode_labels([10])
