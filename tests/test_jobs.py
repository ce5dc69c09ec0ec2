"""Jobs and CLI on the real MiniLM-L6 checkpoint and the real data in ../shared/data."""

from __future__ import annotations

import json

import pytest
import torch

from gearshift.cli import main
from gearshift.jobs import TaskData, evaluate, finetune, model_for_task
from gearshift.runtime import load_pretrained
from gearshift.train import TrainConfig

pytestmark = pytest.mark.integration


def tiny_train(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(
        output_dir=str(tmp_path),
        max_steps=kw.pop("max_steps", 3),
        batch_size=8,
        learning_rate=1e-4,
        progress=False,
        **kw,
    )


def test_finetune_saves_a_teacher_that_reloads_exactly(tmp_path):
    res = finetune(
        "minilm-l6", "sst2", tmp_path, tiny_train(tmp_path), train_limit=48, dev_limit=40
    )
    assert res.model_dir == tmp_path / "best"
    assert 0.0 <= res.score <= 100.0 and res.dev_metrics["examples"] == 40
    meta = json.loads((res.model_dir / "gearshift.json").read_text())
    assert meta["task"]["name"] == "sst2" and meta["config"]["head"]["kind"] == "classification"
    model = load_pretrained(str(res.model_dir))
    model2, tok = model_for_task(
        str(res.model_dir), __import__("gearshift.data").data.get_task("sst2")
    )
    batch = tok(["a fine film", "dreadful"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model2(**batch).logits)


def test_finetune_twice_gives_identical_weights(tmp_path):
    """The fresh head is seeded: the same command gives the same model, whatever ran before."""
    states = []
    for run in ("a", "b"):
        torch.rand(7)  # move the global RNG, as any earlier work in the process would
        res = finetune(
            "minilm-l6",
            "rte",
            tmp_path / run,
            tiny_train(tmp_path / run, max_steps=2),
            train_limit=16,
            dev_limit=8,
        )
        states.append(load_pretrained(str(res.model_dir)).state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_regression_and_token_classification_train_and_score(tmp_path):
    res = finetune(
        "minilm-l6",
        "stsb",
        tmp_path / "stsb",
        tiny_train(tmp_path / "stsb"),
        train_limit=32,
        dev_limit=32,
    )
    assert set(res.dev_metrics) >= {"pearson", "spearman"}
    res = finetune(
        "minilm-l6",
        "conll2003",
        tmp_path / "ner",
        tiny_train(tmp_path / "ner"),
        train_limit=32,
        dev_limit=32,
    )
    assert set(res.dev_metrics) >= {"f1", "precision", "recall"}
    model = load_pretrained(str(res.model_dir))
    assert model.config.head.kind == "token_classification" and model.config.head.num_labels == 9


def test_cli_evaluate_reads_the_task_from_the_folder(tmp_path, capsys):
    finetune(
        "minilm-l6",
        "rte",
        tmp_path,
        tiny_train(tmp_path, max_steps=1),
        train_limit=16,
        dev_limit=16,
    )
    assert main(["evaluate", "--model", str(tmp_path / "best"), "--limit", "24"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "rte" and out["metrics"]["examples"] == 24 and out["metric"] == "accuracy"


def test_cli_custom_task_from_a_csv(tmp_path, capsys):
    rows = ["review,stars"] + [
        f'"{w} product, would {w} again",{s}' for w, s in [("great", "good"), ("awful", "bad")] * 20
    ]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    code = main(
        [
            "finetune",
            "--train-file",
            str(tmp_path / "reviews.csv"),
            "--text-column",
            "review",
            "--label-column",
            "stars",
            "--output",
            str(tmp_path / "out"),
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--no-progress",
        ]
    )
    assert code == 0
    kept = capsys.readouterr().out
    # a finished run says what it kept where, and keeps no optimizer state
    assert "kept:" in kept and "best model" in kept and "optimizer state deleted" in kept
    assert not (tmp_path / "out" / "checkpoint" / "optimizer.pt").exists()
    meta = json.loads((tmp_path / "out" / "best" / "gearshift.json").read_text())
    assert meta["task"]["custom"]["path"] == str((tmp_path / "reviews.csv").resolve())
    assert main(["evaluate", "--model", str(tmp_path / "out" / "best")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metrics"]["examples"] == 4  # 10% of 40 rows held out as dev
    assert out["head_trained"] is True


def test_cli_bad_input_gives_a_message_not_a_traceback(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "missing"), "--task", "sst2"]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "does not exist" in err and "Traceback" not in err
    assert main(["evaluate", "--model", "minilm-l6", "--task", "nosuchtask"]) == 2
    err = capsys.readouterr().err
    assert "nosuchtask" in err and "sst2" in err
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\nfine\tpos\nbroken line without a tab\n")
    assert (
        main(
            [
                "finetune",
                "--train-file",
                str(bad),
                "--text-column",
                "text",
                "--label-column",
                "label",
                "--output",
                str(tmp_path / "o"),
                "--max-steps",
                "1",
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "bad.tsv" in err and "3" in err


def test_cli_profile_prints_flops_latency_memory(tmp_path, capsys):
    assert (
        main(
            [
                "profile",
                "--model",
                "minilm-l6",
                "--task",
                "sst2",
                "--limit",
                "16",
                "--threads",
                "1",
                "--json",
                str(tmp_path / "p.json"),
            ]
        )
        == 0
    )
    prof = json.loads((tmp_path / "p.json").read_text())
    assert prof["flops"]["per_example_at_length"] > prof["flops"]["per_example_dynamic"] > 0
    assert prof["latency"]["b32"]["median_ms"] > 0 and prof["memory"]["b32"]["peak_bytes"] > 0


def test_demo_runs_end_to_end_on_a_small_budget(tmp_path, capsys, monkeypatch):
    from gearshift.jobs import demo

    rows = demo(
        output_dir=tmp_path, train_limit=48, dev_limit=32, epochs=1.0, threads=1, profile_limit=16
    )
    assert rows[0]["method"] == "teacher" and rows[0]["task"] == "sst2"
    for key in (
        "score",
        "flops_dynamic",
        "flops_128",
        "params",
        "latency_ratio_b1",
        "command",
        "machine",
    ):
        assert rows[0][key] is not None
    assert {r["method"] for r in rows} == {"teacher", "plugin", "factorize"}  # every stage ran
    md = (tmp_path / "operating_points.md").read_text()
    assert md.count("| teacher |") == 1
    # the table says what a latency ratio means and how far noise alone moves it
    assert "below 1 is faster, above 1 is slower" in md
    assert md.count("the teacher timed against itself gave ratios") == 2  # batch 1 and 32
    out = capsys.readouterr().out
    assert "Operating points" in out and "stage plugins done in" in out


def test_evaluate_matches_a_manual_accuracy(tmp_path):
    from gearshift.data import get_task

    task = get_task("sst2")
    model, tok = model_for_task("minilm-l6", task)
    data = TaskData.load(task, tok, "dev", limit=20)
    metrics = evaluate(model, data, batch_size=7)
    with torch.no_grad():
        b = data.collator([dict(f) for f in data.features])
        labels = b.pop("labels")
        acc = (model(**b).logits.argmax(-1) == labels).float().mean().item() * 100
    assert metrics["accuracy"] == pytest.approx(acc)


def test_an_interrupted_teacher_is_not_taken_for_a_finished_one(tmp_path, monkeypatch):
    from gearshift import jobs

    monkeypatch.setenv("GEARSHIFT_CACHE", str(tmp_path))
    root = jobs.teacher_dir("rte")
    calls = []
    monkeypatch.setattr(jobs, "finetune", lambda *a, **k: calls.append(k["resume"]))
    (root / "best").mkdir(parents=True)
    (root / "best" / "gearshift.json").write_text("{}")
    (root / "checkpoint").mkdir()
    state = root / "checkpoint" / "trainer_state.json"
    state.write_text(json.dumps({"global_step": 99, "total_steps": 390}))
    jobs.ensure_teacher("rte", progress=False)
    assert calls == [True]  # resumed, not skipped
    state.write_text(json.dumps({"global_step": 390, "total_steps": 390}))
    assert jobs.ensure_teacher("rte") == root / "best" and calls == [True]


@pytest.mark.parametrize(
    "verb",
    [
        ["finetune"],
        ["evaluate"],
        ["predict"],
        ["profile"],
        ["demo"],
        ["tasks"],
        ["plugin", "train"],
        ["plugin", "eval"],
        ["factorize"],
        ["share"],
        ["steps", "eval"],
        ["steps", "finetune"],
        ["steps", "decoder"],
        ["slim"],
    ],
)
def test_every_cli_verb_prints_its_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: gearshift" in capsys.readouterr().out
