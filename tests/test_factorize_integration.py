"""Offline compression on the real MiniLM-L6 checkpoint and real data (small limits)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from gearshift.methods.factorize import (
    DecodedLinear,
    FactorizeConfig,
    LowRankLinear,
    calibration_batches,
    compress,
    load_factorized,
    save_factorized,
)
from gearshift.runtime import load_pretrained, load_tokenizer

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def one_thread():
    """On a busy 2-core machine, BLAS threads fighting over cores make LAPACK many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def minilm():
    return load_pretrained("minilm-l6", head_kind="classification", num_labels=2).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm-l6")


def hidden(model, batch) -> torch.Tensor:
    with torch.no_grad():
        h = model(
            **{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        ).last_hidden_state
    return h[batch["attention_mask"].bool()]


def test_whitened_svd_on_minilm_keeps_the_model_close_and_round_trips(minilm, tokenizer, tmp_path):
    import copy

    cal = calibration_batches(tokenizer, "text", examples=32, max_length=64)
    probe = calibration_batches(tokenizer, "task", task="sst2", examples=16, seed=1)[0]
    ref = hidden(minilm, probe)
    modules = ["attn.q", "attn.k", "attn.v", "attn.o"]
    cos = {}
    for method in ("svd", "svdllm"):
        cfg = FactorizeConfig(method=method, ratio=2.0, modules=modules, progress=False)
        model, report = compress(copy.deepcopy(minilm), cfg, cal)
        assert 2.0 <= report.achieved_ratio < 2.05
        assert (
            isinstance(model.blocks[3].attn.k, LowRankLinear) and model.blocks[3].attn.k.rank == 96
        )
        cos[method] = float(
            torch.nn.functional.cosine_similarity(hidden(model, probe), ref, dim=-1).mean()
        )
    # activation-aware beats plain SVD on real text (measured: 0.84 against 0.80)
    assert cos["svdllm"] > cos["svd"] + 0.02
    assert cos["svdllm"] > 0.8
    folder = save_factorized(model, tmp_path / "m", tokenizer=tokenizer)
    again = load_factorized(folder)
    assert torch.equal(hidden(again, probe), hidden(model, probe))
    assert (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()


def test_grouped_autoencoder_on_minilm_saves_storage_not_flops(minilm, tokenizer, tmp_path):
    import copy

    from gearshift.measure import count_flops, count_parameters

    cfg = FactorizeConfig(
        method="ae",
        ratio=4.0,
        grouped=True,
        modules=["attn.k", "attn.v"],
        ae_steps=40,
        progress=False,
    )
    model, report = compress(copy.deepcopy(minilm), cfg)
    ks = [b.attn.k for b in model.blocks]
    assert all(isinstance(k, DecodedLinear) for k in ks) and len({id(k.decoder) for k in ks}) == 1
    assert report.achieved_ratio >= 4.0
    batch = calibration_batches(tokenizer, "task", task="sst2", examples=4)[0]
    assert count_flops(model, batch) == count_flops(minilm, batch)
    assert (
        count_parameters(minilm) - count_parameters(model)
        == report.original_weights - report.stored
    )
    folder = save_factorized(model, tmp_path / "ae")
    assert torch.equal(hidden(load_factorized(folder), batch), hidden(model, batch))


def test_factorize_command_line(tmp_path, capsys):
    from gearshift.methods.factorize.cli import add_cli

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli"
    args = parser.parse_args(
        [
            "factorize",
            "--model",
            "minilm-l6",
            "--method",
            "svd",
            "--ratio",
            "4",
            "--modules",
            "ffn.inp",
            "ffn.out",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "achieved 4.0" in printed and "saved to" in printed
    model = load_factorized(out)
    assert isinstance(model.blocks[0].ffn.inp, LowRankLinear)
    assert model.factorize_config.ratio == 4.0


def test_benchmark_resume_reruns_autoencoder_rows_of_other_step_counts(tmp_path, load_benchmark):
    """benchmarks/factorize.py --resume skips a recorded setting only when it was measured
    the same way: autoencoder rows trained with another step count are measured again."""
    from gearshift.measure import ResultsSink

    fact = load_benchmark("factorize")
    library_ae_steps = load_benchmark("report").LIBRARY_AE_STEPS

    def row(method, command, **extras):
        return {
            "task": "rte",
            "model": "minilm-l6",
            "method": method,
            "setting": "ratio 2, per-layer, no fine-tuning",
            "metric": "accuracy",
            "score": 50.0,
            "command": command,
            "extras": {"factorize_method": method, **extras},
        }

    old = "python benchmarks/factorize.py --tasks rte"
    sink = ResultsSink(tmp_path / "f.json", "factorize")
    sink.add(
        [
            row("svd", old),
            row("ae", old + " --ae-steps 300"),  # the first RTE rows: 300 steps by hand
            row("ae-act", old),  # no flag: the library's 1000 + 1000 refining
        ]
    )
    args = fact.parse_args(["--tasks", "rte"])
    assert args.ae_steps == fact.AE_STEPS == 1000
    assert fact.parse_args(["--quick"]).ae_steps == 40
    from gearshift.methods.factorize import FactorizeConfig

    assert FactorizeConfig.ae_steps == library_ae_steps
    setting = "ratio 2, per-layer, no fine-tuning"

    def done(method):
        config = fact.factorize_config(method, 2.0, False, args)
        return fact.recorded(sink, "rte", method, "per-layer", setting, config)

    assert done("svd") and done("ae-act")
    assert not done("ae")  # 300 steps recorded, 1000 asked: measured again
    assert fact.ae_steps_of(sink.rows[1]) == (300, 0)
    assert fact.ae_steps_of(sink.rows[2]) == (1000, 1000)
    assert not done("svdllm")  # never recorded
    sink.add(row("ae", old, ae_steps=1000, ae_refine_steps=0))
    assert done("ae")
    # a rebuilt teacher (another dev score): its no-fine-tuning rows are measured again
    svd = fact.factorize_config("svd", 2.0, False, args)
    sink.rows[0]["reference_score"] = 59.93
    assert fact.recorded(sink, "rte", "svd", "per-layer", setting, svd, False, 59.93)
    assert not fact.recorded(sink, "rte", "svd", "per-layer", setting, svd, False, 56.68)
    # a rebuild at another thread count: the same teacher to the last bits of its score
    assert fact.recorded(sink, "rte", "svd", "per-layer", setting, svd, False, 59.931)


def test_benchmark_finetune_protocol_has_an_uncompressed_reference(
    tmp_path, monkeypatch, capsys, load_benchmark, minilm, tokenizer
):
    """benchmarks/factorize.py --with-finetune: the compressed pre-trained model fine-tuned,
    beside the uncompressed pre-trained model fine-tuned the same way; fwsvd takes its Fisher
    weights from the task's teacher (its compressed model is the task's own); --resume then
    finds every setting recorded."""
    import json

    from gearshift.runtime import save_model

    monkeypatch.setenv("GEARSHIFT_CACHE", str(tmp_path / "cache"))
    teacher = save_model(
        minilm, tmp_path / "teacher", tokenizer, {"task": {"name": "rte", "kind": "classification"}}
    )
    fact = load_benchmark("factorize")
    out = tmp_path / "f.json"
    argv = ["--quick", "--teacher", str(teacher), "--tasks", "rte", "--methods", "svd", "fwsvd"]
    argv += ["--modes", "per-layer", "--with-finetune", "--finetune-examples", "64"]
    argv += ["--out", str(out)]
    assert fact.main(argv) == 0
    rows = {(r["method"], r["setting"]): r for r in json.loads(out.read_text())["rows"]}
    protocol = "(64 examples, 1 epoch)"
    ref = rows["uncompressed+finetune", f"uncompressed pre-trained then fine-tune {protocol}"]
    tuned = rows[
        "svd+finetune", f"ratio 2, per-layer, compress pre-trained then fine-tune {protocol}"
    ]
    untuned = rows["svd", "ratio 2, per-layer, no fine-tuning"]
    assert ref["params"] == rows["teacher", "full"]["params"] > tuned["params"]
    assert tuned["params"] == untuned["params"] and tuned["extras"]["protocol"] == "finetune"
    assert ref["extras"]["finetune_examples"] == 64
    fw = rows[
        "fwsvd+finetune", f"ratio 2, per-layer, compress pre-trained then fine-tune {protocol}"
    ]
    assert fw["params"] == tuned["params"]
    cached = sorted(p.name for p in (tmp_path / "cache" / "factorize-pretrained").iterdir())
    assert [n for n in cached if n.startswith("fwsvd")][0].endswith("-fisher-rte")
    # every fine-tuned row says where it started and whether its training loss moved
    assert ref["extras"]["start_fidelity"] == pytest.approx(1.0)
    assert tuned["extras"]["start_fidelity"] < 1.0
    for row in (ref, tuned, fw):
        assert row["extras"]["train_loss_first"] > 0 and row["extras"]["train_loss_last"] > 0
    assert 0 < tuned["extras"]["weight_change"] < 1 and "weight_change" not in ref["extras"]
    assert fact.main(argv + ["--resume"]) == 0
    assert "--resume found every setting recorded" in capsys.readouterr().out
    # rows recorded before they had the diagnosis get it back on --resume
    data = json.loads(out.read_text())
    for row in data["rows"]:
        for k in ("start_fidelity", "train_loss_first", "train_loss_last", "weight_change"):
            row["extras"].pop(k, None)
    out.write_text(json.dumps(data))
    assert fact.main(argv + ["--resume"]) == 0
    again = {(r["method"], r["setting"]): r for r in json.loads(out.read_text())["rows"]}
    for key, row in ((k, again[k]) for k in again if k[0] in ("svd+finetune", "fwsvd+finetune")):
        assert row["extras"]["start_fidelity"] == pytest.approx(
            rows[key]["extras"]["start_fidelity"]
        )
        assert row["extras"]["train_loss_last"] == rows[key]["extras"]["train_loss_last"]
        assert row["extras"]["weight_change"] == pytest.approx(rows[key]["extras"]["weight_change"])
    # the diagnosis: the same compressed start, rebuilt dense and fine-tuned as plain matrices
    dense_argv = [a for a in argv if a != "fwsvd"] + ["--finetune-form", "dense"]
    assert fact.main(dense_argv) == 0
    rows = {(r["method"], r["setting"]): r for r in json.loads(out.read_text())["rows"]}
    dense = rows[
        "svd+finetune-dense",
        f"ratio 2, per-layer, compress pre-trained, rebuild dense, then fine-tune {protocol}",
    ]
    assert dense["params"] == ref["params"] and dense["extras"]["stored_ratio"] == 1.0
    assert dense["extras"]["start_fidelity"] == pytest.approx(tuned["extras"]["start_fidelity"])
    assert ("svd+finetune", tuned["setting"]) in rows  # the compressed-form row is kept
    # the other diagnosis: the compressed form's parameters at their own learning rate
    lr_argv = [a for a in argv if a != "fwsvd"] + ["--finetune-compressed-lr", "1e-3"]
    assert fact.main(lr_argv) == 0
    rows = {(r["method"], r["setting"]): r for r in json.loads(out.read_text())["rows"]}
    fast = rows[
        "svd+finetune-lr0.001",
        "ratio 2, per-layer, compress pre-trained, compressed parameters at lr 0.001, "
        f"then fine-tune {protocol}",
    ]
    assert fast["params"] == tuned["params"] and fast["extras"]["finetune_form"] == "lr0.001"
    with pytest.raises(SystemExit):
        fact.main(dense_argv + ["--finetune-compressed-lr", "1e-3"])
    assert "pass one of them" in capsys.readouterr().err


def test_benchmark_resume_continues_a_cut_off_fine_tuning_run(
    tmp_path, monkeypatch, load_benchmark, minilm, tokenizer
):
    """--resume continues a protocol row whose fine-tuning was cut off from its last
    checkpoint and ends where an uninterrupted run ends; a folder that another row's run
    left under the same name is not continued."""
    import json

    from gearshift.runtime import save_model
    from gearshift.train.loop import Trainer

    monkeypatch.setenv("GEARSHIFT_CACHE", str(tmp_path / "cache"))
    teacher = save_model(
        minilm, tmp_path / "teacher", tokenizer, {"task": {"name": "rte", "kind": "classification"}}
    )
    fact = load_benchmark("factorize")
    argv = ["--teacher", str(teacher), "--tasks", "rte", "--methods", "svd", "--ratios", "2"]
    argv += ["--modes", "per-layer", "--with-finetune", "--finetune-examples", "64"]
    argv += ["--finetune-epochs", "2"]  # 2 steps an epoch: a checkpoint at step 2 of 4
    # --quick's limits, but 2 epochs (--quick fine-tunes for 1)
    argv += ["--calibration-examples", "32", "--dev-limit", "100", "--measure-texts", "8"]
    argv += ["--latency-repeats", "3"]
    setting = "ratio 2, per-layer, compress pre-trained then fine-tune (64 examples, 2 epochs)"

    def tuned(out):
        rows = json.loads(out.read_text())["rows"]
        found = [r for r in rows if (r["method"], r["setting"]) == ("svd+finetune", setting)]
        assert found, [(r["method"], r["setting"]) for r in rows]
        return found[0]

    straight = tmp_path / "straight.json"
    assert fact.main(argv + ["--out", str(straight)]) == 0
    save = Trainer.save_checkpoint

    def cut_off(self, *args, **kwargs):
        path = save(self, *args, **kwargs)
        if Path(self.output_dir).name.startswith("svd"):
            raise KeyboardInterrupt
        return path

    out = tmp_path / "f.json"
    monkeypatch.setattr(Trainer, "save_checkpoint", cut_off)
    with pytest.raises(KeyboardInterrupt):
        fact.main(argv + ["--out", str(out)])
    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    assert fact.main(argv + ["--out", str(out), "--resume"]) == 0
    resumed, whole = tuned(out), tuned(straight)
    assert resumed["extras"]["finetune_resumed_at_step"] == 2
    assert "finetune_resumed_at_step" not in whole["extras"]
    assert resumed["score"] == pytest.approx(whole["score"])
    for key in ("train_loss_last", "weight_change"):
        assert resumed["extras"][key] == pytest.approx(whole["extras"][key])
    # the folder names its row; another row's run under the same name is not continued
    folder = tmp_path / "cache" / "factorize-finetune" / "rte" / "svd-per-layer-2"
    identity = json.loads((folder / "run.json").read_text())
    assert identity["setting"] == setting
    assert fact.resume_step(folder, identity) == 4
    assert (
        fact.resume_step(folder, {**identity, "config": {**identity["config"], "ratio": 3}}) is None
    )


def test_benchmark_seed_study_draws_another_calibration_sample_scores_only(
    tmp_path, monkeypatch, load_benchmark, minilm, tokenizer
):
    """benchmarks/factorize.py --seed N: the no-fine-tuning rows of methods that draw (the
    calibration sample, the autoencoders' init) are scored again beside the default seed's,
    untimed, with their own top-level seed; plain svd (no draw) is not re-run; the teacher
    row stays the default run's; --resume knows each seed's rows apart; the fine-tuning
    protocol refuses another seed."""
    import json

    from gearshift.runtime import save_model

    monkeypatch.setenv("GEARSHIFT_CACHE", str(tmp_path / "cache"))
    teacher = save_model(
        minilm, tmp_path / "teacher", tokenizer, {"task": {"name": "rte", "kind": "classification"}}
    )
    fact = load_benchmark("factorize")
    out = tmp_path / "f.json"
    argv = ["--quick", "--teacher", str(teacher), "--tasks", "rte", "--methods", "svd", "svdllm"]
    argv += ["--modes", "per-layer", "--out", str(out)]
    assert fact.main(argv) == 0
    assert fact.main(argv + ["--seed", "43"]) == 0

    def rows():
        return json.loads(out.read_text())["rows"]

    got = {(r["method"], r["seed"]): r for r in rows()}
    assert set(got) == {("teacher", None), ("svd", 42), ("svdllm", 42), ("svdllm", 43)}
    study, first = got["svdllm", 43], got["svdllm", 42]
    assert study["latency_ratio_b1"] is None and study["latency_ratio_b32"] is None
    assert first["latency_ratio_b32"] is not None
    assert study["extras"]["calibration_seed"] == 43 and first["extras"]["calibration_seed"] == 0
    assert study["params"] == first["params"] and study["setting"] == first["setting"]
    assert fact.draw_seed(fact.parse_args(["--seed", "43"])) == 43
    assert fact.factorize_config("ae", 2.0, False, fact.parse_args(["--seed", "43"])).seed == 43
    assert fact.factorize_config("ae", 2.0, False, fact.parse_args([])).seed == 0
    before = len(rows())
    assert fact.main(argv + ["--seed", "43", "--resume"]) == 0
    assert len(rows()) == before
    with pytest.raises(SystemExit):
        fact.parse_args(["--seed", "43", "--with-finetune"])


def test_benchmark_plots_fine_tuned_rows_apart(load_benchmark, tmp_path, monkeypatch):
    """benchmarks/factorize.py draws the rows with no fine-tuning and the fine-tuned ones in
    two plots, the teacher in both, a seed study's samples as one mean point."""
    factorize = load_benchmark("factorize")
    drawn = {}
    monkeypatch.setattr(
        factorize, "plot_tradeoff", lambda rows, path, **kw: drawn.update({path.name: rows})
    )

    def row(method, score, seed=42, task="sst2"):
        return {
            "task": task,
            "method": method,
            "setting": "ratio 2",
            "score": score,
            "params": 1,
            "seed": seed,
        }

    rows = [
        row("teacher", 90.0),
        row("svd", 60.0),
        row("svd", 62.0, seed=43),
        row("svd+finetune", 80.0),
        row("uncompressed+finetune", 85.0),
        row("svd", 10.0, task="mrpc"),
    ]
    written = factorize.plot_task(rows, "sst2", tmp_path)
    assert [p.name for p in written] == ["factorize_sst2.png", "factorize_sst2_finetuned.png"]
    plain = {r["method"]: r["score"] for r in drawn["factorize_sst2.png"]}
    assert plain == {"teacher": 90.0, "svd": 61.0}
    tuned = {r["method"] for r in drawn["factorize_sst2_finetuned.png"]}
    assert tuned == {"teacher", "svd+finetune", "uncompressed+finetune"}
    drawn.clear()
    assert [p.name for p in factorize.plot_task(rows[:3], "sst2", tmp_path)] == [
        "factorize_sst2.png"
    ]
