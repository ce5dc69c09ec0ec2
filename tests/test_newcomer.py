"""A newcomer's first hour: gearshift.load / gearshift.predict and the predict verb, a fast
--help, honest refusals and messages that name the real problem and the fix.

Everything runs on a tiny random BERT that uses MiniLM-L6's tokenizer (seconds in all)."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_hf_config

import gearshift
from gearshift.cli import build_parser, main
from gearshift.data import CustomTaskConfig, get_task, make_custom_task
from gearshift.data.recorded import custom_task_record, resolve_task, task_of_folder
from gearshift.errors import ArtifactError, ConfigError, DataError
from gearshift.runtime import load_hf, load_pretrained, load_tokenizer, save_model


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny HF checkpoint without a head, a 'teacher' that records sst2 and a regression
    model that records stsb (random weights; the tokenizer is MiniLM-L6's)."""
    import transformers as T

    root = tmp_path_factory.mktemp("newcomer")
    tok = load_tokenizer("minilm-l6")
    torch.manual_seed(0)
    cfg = tiny_hf_config("bert", vocab_size=tok.vocab_size, max_position_embeddings=130)
    hf = root / "hf"
    T.BertModel(cfg, add_pooling_layer=True).save_pretrained(hf)
    tok.save_pretrained(hf)
    sst2, stsb = get_task("sst2"), get_task("stsb")
    teacher = load_hf(str(hf), "classification", 2, list(sst2.label_names))
    save_model(teacher, root / "teacher", tokenizer=tok, extra={"task": custom_task_record(sst2)})
    reg = load_hf(str(hf), "regression", 1)
    save_model(reg, root / "regression", tokenizer=tok, extra={"task": custom_task_record(stsb)})
    return {"hf": hf, "teacher": root / "teacher", "regression": root / "regression"}


@pytest.fixture
def reviews(tmp_path):
    """A small custom classification task in a CSV file."""
    path = tmp_path / "reviews.csv"
    rows = [("a fine film", "good"), ("dull and long", "bad")] * 10
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["review", "verdict"])
        w.writerows(rows)
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------- load and predict
def test_load_names_each_kind_and_predict_gives_label_names_and_probabilities(folders):
    model = gearshift.load(folders["teacher"])
    assert model.tokenizer is not None and model.folder == str(folders["teacher"])
    texts = ["a gorgeous film", "a waste of time", "fine"]
    rows = gearshift.predict(model, texts, batch_size=2)
    assert len(rows) == 3
    for row in rows:
        assert set(row["probabilities"]) == {"negative", "positive"}
        assert abs(sum(row["probabilities"].values()) - 1.0) < 1e-6
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
    # the same as the model's own logits, softmaxed
    enc = model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)
    got = torch.tensor(
        [[r["probabilities"]["negative"], r["probabilities"]["positive"]] for r in rows]
    )
    assert torch.allclose(got, probs, atol=1e-5)


def test_predict_regression_gives_a_score(folders):
    model = gearshift.load(folders["regression"])
    rows = gearshift.predict(model, ["a man plays"], ["a man is playing"])
    assert set(rows[0]) == {"score"} and isinstance(rows[0]["score"], float)
    with pytest.raises(DataError, match="2 texts but 1 text pairs"):
        gearshift.predict(model, ["a", "b"], ["c"])


def test_load_refuses_what_is_not_a_model_naming_its_kind(tmp_path, folders):
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "gearshift.json").write_text(json.dumps({"kind": "plugin", "config": {}}))
    with pytest.raises(ArtifactError, match="'plugin' folder"):
        gearshift.load(plugin)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "gearshift.json").write_text(json.dumps({"kind": "mystery", "config": {}}))
    with pytest.raises(ArtifactError, match="mystery"):
        gearshift.load(odd)
    # an HF checkpoint folder loads too (no head: predict says what to do)
    hf = gearshift.load(folders["hf"])
    with pytest.raises(ConfigError, match="no task head"):
        gearshift.predict(hf, ["x"])


def test_cli_predict_equals_the_python_function_for_txt_csv_and_jsonl(tmp_path, folders, capsys):
    texts = ["a gorgeous film", "a waste of time", "fine, I guess"]
    expected = gearshift.predict(gearshift.load(folders["teacher"]), texts)
    txt = tmp_path / "in.txt"
    txt.write_text("\n".join(texts[:2]) + "\n\n" + texts[2] + "\n")
    code, out, _ = run_cli(capsys, "predict", "--model", folders["teacher"], "--input", txt)
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["line"] for r in lines] == [1, 2, 4]  # the blank line 3 is not an input
    for got, want in zip(lines, expected):
        assert got["label"] == want["label"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)

    tsv = tmp_path / "in.tsv"
    tsv.write_text("id\tsentence\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(texts)))
    out_csv = tmp_path / "out.csv"
    code, _, err = run_cli(
        capsys, "predict", "--model", folders["teacher"], "--input", tsv, "--output", out_csv
    )
    assert code == 0 and "3 predictions written" in err
    with out_csv.open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["text"] for r in table] == texts
    assert [r["label"] for r in table] == [w["label"] for w in expected]
    assert float(table[0]["p_positive"]) == pytest.approx(
        expected[0]["probabilities"]["positive"], abs=1e-5
    )

    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    out_jsonl = tmp_path / "out.jsonl"
    code, _, _ = run_cli(
        capsys, "predict", "--model", folders["teacher"], "--input", jsonl,
        "--text-column", "body", "--output", out_jsonl,
    )  # fmt: skip
    got = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert [g["label"] for g in got] == [w["label"] for w in expected]


def test_predict_never_drops_a_headerless_first_row(tmp_path, folders, capsys):
    f = tmp_path / "plain.tsv"
    f.write_text("first text\t1\nsecond text\t0\n")
    code, _, err = run_cli(
        capsys, "predict", "--model", folders["teacher"], "--input", f, "--text-column", "0"
    )
    assert code == 2 and "--no-header" in err and "first text" in err
    code, out, _ = run_cli(
        capsys, "predict", "--model", folders["teacher"], "--input", f,
        "--text-column", "0", "--no-header",
    )  # fmt: skip
    assert code == 0 and len(out.splitlines()) == 2


# ---------------------------------------------------------------------- honest evaluation
def test_evaluate_refuses_a_head_trained_on_another_task(folders, capsys):
    for task in ("stsb", "cola", "conll2003"):
        code, _, err = run_cli(capsys, "evaluate", "--model", folders["teacher"], "--task", task)
        assert code == 2
        assert "fine-tuned on sst2" in err and f"you asked for {task}" in err
        assert "--force-task" in err


def test_evaluate_with_force_task_and_an_untrained_head_warns_before_the_score(
    tmp_path, folders, reviews, capsys
):
    code, out, err = run_cli(
        capsys, "evaluate", "--model", folders["hf"], "--train-file", reviews,
        "--text-column", "review", "--label-column", "verdict", "--no-progress",
    )  # fmt: skip
    assert code == 0
    assert "WARNING" in err and "no trained custom head" in err and "chance level" in err
    result = json.loads(out)
    assert result["head_trained"] is False
    code, out, err = run_cli(
        capsys, "evaluate", "--model", folders["teacher"], "--force-task", "--no-progress",
        "--train-file", reviews, "--text-column", "review", "--label-column", "verdict",
    )  # fmt: skip
    assert code == 0 and "--force-task" in err and "WARNING" in err


def test_load_pretrained_respects_num_labels_when_the_head_kind_matches(folders):
    model = load_pretrained(str(folders["teacher"]), head_kind="classification", num_labels=5)
    assert model.config.head.num_labels == 5 and model.head.out.out_features == 5
    same = load_pretrained(str(folders["teacher"]), head_kind="classification", num_labels=2)
    kept = load_pretrained(str(folders["teacher"]))
    assert torch.equal(same.head.out.weight, kept.head.out.weight)  # fits: kept, not redrawn


# ---------------------------------------------------------------------- the recorded task
def test_a_custom_task_is_recorded_with_absolute_paths_and_found_by_every_lookup(
    tmp_path, folders, reviews, monkeypatch
):
    monkeypatch.chdir(reviews.parent)
    spec = make_custom_task(
        CustomTaskConfig(path="reviews.csv", text_column="review", label_column="verdict")
    )
    record = custom_task_record(spec)
    assert Path(record["custom"]["path"]).is_absolute()
    assert "--train-file" in record["data_hint"] and "--text-column review" in record["data_hint"]
    model = load_pretrained(str(folders["teacher"]))
    moved = tmp_path / "elsewhere" / "model"
    save_model(model, moved, extra={"task": record})
    monkeypatch.chdir(tmp_path)
    assert task_of_folder(moved) == "custom"
    assert resolve_task(str(moved)).custom.path == reviews.resolve()
    # the data moved too: the error names the model, the file and the flags to pass
    reviews.rename(tmp_path / "gone.csv")
    from gearshift.data import load_examples

    with pytest.raises(DataError) as err:
        load_examples(resolve_task(str(moved)), "dev")
    msg = str(err.value)
    assert str(moved) in msg and "--train-file" in msg and "--label-column verdict" in msg


# ---------------------------------------------------------------------- messages
def test_messages_name_the_real_problem(tmp_path, capsys):
    code, _, err = run_cli(capsys, "evaluate", "--model", tmp_path / "nope")
    assert code == 2 and "no such model folder" in err and "no task given" not in err
    code, _, err = run_cli(capsys, "plugin", "eval", "--model", tmp_path / "nope", "--plugin", "x")
    assert code == 2 and "no such model folder" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="neither gearshift.json .* nor config.json"):
        load_pretrained(str(empty))
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "gearshift.json").write_text('{"config": {"family": "bert", "num_la')
    with pytest.raises(ArtifactError, match=r"line 1 column \d+ .*truncated or damaged"):
        load_pretrained(str(trunc))


def test_interrupt_advice_matches_what_each_verb_accepts(monkeypatch, capsys):
    import gearshift.demo
    import gearshift.train.finetune

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gearshift.demo, "demo", stop)
    code, _, err = run_cli(capsys, "demo", "--output", "unused")
    assert code == 130 and "--resume" not in err and "same command again" in err
    assert build_parser(["demo"]).parse_args(["demo", "--resume"]).resume  # accepted
    monkeypatch.setattr(gearshift.train.finetune, "finetune", stop)
    code, _, err = run_cli(capsys, "finetune", "--task", "sst2", "--output", "unused-ft")
    assert code == 130 and "--resume" in err


def test_finetune_into_an_existing_run_needs_resume_or_overwrite(tmp_path, capsys):
    (tmp_path / "run" / "best").mkdir(parents=True)
    (tmp_path / "run" / "best" / "gearshift.json").write_text("{}")
    code, _, err = run_cli(capsys, "finetune", "--task", "sst2", "--output", tmp_path / "run")
    assert code == 2 and "already holds a run" in err
    assert "--resume" in err and "--overwrite" in err
    from gearshift.train.finetune import check_output_free

    check_output_free(tmp_path / "run", resume=True, overwrite=False)  # continuing is fine
    assert (tmp_path / "run" / "best").is_dir()
    check_output_free(tmp_path / "run", resume=False, overwrite=True)
    assert not (tmp_path / "run" / "best").exists()  # the old run is gone, not mixed in


# ---------------------------------------------------------------------- fast, documented CLI
def _median_seconds(cmd: list[str], repeats: int = 3) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_help_and_version_are_faster_than_importing_torch():
    torch_s = _median_seconds([sys.executable, "-c", "import torch"])
    for flag in ("--help", "--version"):
        help_s = _median_seconds([sys.executable, "-m", "gearshift.cli", flag])
        assert help_s < torch_s, f"gearshift {flag}: {help_s:.2f} s, import torch {torch_s:.2f} s"
    out = subprocess.run(
        [sys.executable, "-c", "import sys, gearshift, gearshift.cli; "
         "gearshift.cli.build_parser(['--help']); print('torch' in sys.modules)"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert out.stdout.strip() == "False"


def test_every_core_option_has_help_and_shows_its_default():
    parser = build_parser([])
    sub = next(a for a in parser._actions if a.dest == "command")
    for verb in ("finetune", "evaluate", "predict", "profile", "demo"):
        p = sub.choices[verb]
        text = p.format_help()
        for action in p._actions:
            assert action.help, f"gearshift {verb} {action.option_strings}: no help text"
        assert "--threads" in text
    assert "(default: 5e-05)" in sub.choices["finetune"].format_help()
    assert "(default: dev)" in sub.choices["evaluate"].format_help()


def test_profile_names_the_folder_and_prints_threads_once(folders):
    from gearshift.measure.profile import profile_markdown, profile_model

    model = gearshift.load(folders["teacher"])
    result = profile_model(model, model.tokenizer, ["a film", "two films"], repeats=2, warmup=1)
    result["model_name"] = str(folders["teacher"])
    text = profile_markdown(result)
    assert f"# Model profile: {folders['teacher']}" in text
    assert text.count("torch threads") == 1


def test_profiler_notices_do_not_leak_and_other_stderr_does(tmp_path):
    script = (
        "import os, sys\n"
        "from gearshift.measure.profile import quiet_profiler_lines\n"
        "with quiet_profiler_lines():\n"
        "    os.write(2, b'USDT:2026 1:1 SyncActivityProfilerHandler.cpp:52] profiler_start\\n')\n"
        "    os.write(2, b'keep this line\\n')\n"
        "    os.write(2, b'\\rbar 50%USDT:2026 1:1 SyncActivityProfilerHandler.cpp:59] "
        "profiler_stop\\n')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "USDT" not in out.stderr and "keep this line" in out.stderr
    assert "bar 50%" in out.stderr  # a progress bar the notice landed in survives


def test_load_and_predict_take_a_stack_folder(tmp_path, folders):
    """A stack (gearshift.compose) loads through gearshift.load like any model and predicts
    what its base predicts when no provider is switched on."""
    from gearshift.compose import Stack, save_stack

    base = load_pretrained(str(folders["teacher"]))
    stack_dir = save_stack(Stack(base), tmp_path / "stack", tokenizer=load_tokenizer("minilm-l6"))
    stack = gearshift.load(stack_dir)
    texts = ["a gorgeous film", "a waste of time"]
    got = gearshift.predict(stack, texts)
    want = gearshift.predict(gearshift.load(folders["teacher"]), texts)
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want):
        assert g["probabilities"] == pytest.approx(w["probabilities"], abs=1e-6)


@pytest.mark.integration
def test_the_readme_python_snippet_runs(tmp_path, monkeypatch):
    """The README's Python API block, run as a newcomer would (real MiniLM-L6 and SST-2)."""
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "ensure_teacher(" not in code  # no hidden teacher training
    from gearshift.paths import data_root

    root = data_root()  # found from the checkout; keep it once the test leaves it
    assert root is not None, "SST-2 not found: set GEARSHIFT_DATA (see README: Data)"
    monkeypatch.setenv("GEARSHIFT_DATA", str(root.resolve()))
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "quickstart" / "copy" / "gearshift.json").is_file()


def test_no_header_reaches_a_custom_task_from_the_flags(tmp_path):
    from gearshift.cli import _resolve_task

    f = tmp_path / "plain.tsv"
    f.write_text("".join(f"text {i}\t{i % 2}\n" for i in range(10)))
    argv = ["evaluate", "--model", "minilm-l6", "--train-file", str(f)]
    argv += ["--text-column", "0", "--label-column", "1"]
    with pytest.raises(DataError, match="--no-header"):
        _resolve_task(build_parser(argv).parse_args(argv))
    args = build_parser(argv).parse_args([*argv, "--no-header"])
    task = _resolve_task(args)
    from gearshift.data import load_examples

    assert task.custom.has_header is False
    assert len(load_examples(task, "train")) + len(load_examples(task, "dev")) == 10


def test_plugged_verb_table_matches_what_each_module_registers():
    """`gearshift --help` lists plugged verbs from PLUGGED_VERBS without importing them: the
    table must name exactly the verbs each module adds, and each must answer --help."""
    import argparse

    from gearshift.cli import PLUGGED_VERBS, _add_plugged

    for spec, verbs in PLUGGED_VERBS.items():
        sub = argparse.ArgumentParser().add_subparsers()
        _add_plugged(sub, spec)
        assert set(sub.choices) == set(verbs), f"{spec} registers {sorted(sub.choices)}"
        for verb in verbs:
            with pytest.raises(SystemExit) as exit_info:
                main([verb, "--help"])
            assert exit_info.value.code == 0


def test_a_stack_whose_head_does_not_fit_the_task_is_refused_not_a_traceback(
    tmp_path, folders, capsys
):
    from gearshift.compose import Stack, save_stack

    stack_dir = save_stack(
        Stack(load_pretrained(str(folders["regression"]))),
        tmp_path / "stack",
        tokenizer=load_tokenizer("minilm-l6"),
    )
    code, _, err = run_cli(capsys, "evaluate", "--model", stack_dir, "--task", "sst2")
    assert code == 2 and "a regression head" in err and "cannot swap its head" in err
