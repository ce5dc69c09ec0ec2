"""Fast tests of gearshift.data: registry, readers, bad input, encoding, batching, metrics."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from gearshift.data import (
    CONLL2003_LABELS,
    CustomTaskConfig,
    Example,
    TaskSpec,
    align_word_labels,
    compute_metrics,
    constant_score,
    encode_examples,
    get_task,
    iter_texts,
    list_tasks,
    load_examples,
    make_collator,
    make_custom_task,
    make_dataloader,
    normalize_split,
    register_task,
    split_sentences,
)
from gearshift.data.glue import load_glue
from gearshift.errors import DataError, GearshiftError
from gearshift.paths import resolve_model_name


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_name("minilm-l6"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("SST-2", "sst2"),
        ("sst2", "sst2"),
        ("STS-B", "stsb"),
        ("stsb", "stsb"),
        ("MRPC", "mrpc"),
        ("CoLA", "cola"),
        ("qqp", "qqp"),
        ("MNLI", "mnli"),
        ("mnli-mm", "mnli-mm"),
        ("QNLI", "qnli"),
        ("rte", "rte"),
        ("NER", "conll2003"),
        ("CoNLL2003", "conll2003"),
        ("text", "wikitext2"),
        ("WikiText2", "wikitext2"),
    ],
)
def test_get_task_aliases(alias, name):
    assert get_task(alias).name == name
    assert get_task(f"  {alias.upper()} ").name == name


def test_unknown_task_lists_known_tasks():
    with pytest.raises(DataError) as info:
        get_task("squad-ish")
    message = str(info.value)
    assert "squad-ish" in message
    for name in ("sst2", "rte", "conll2003", "wikitext2"):
        assert name in message
    assert isinstance(info.value, GearshiftError)


def test_task_specs_main_metrics_and_labels():
    expected_main = {
        "cola": "matthews",
        "sst2": "accuracy",
        "mrpc": "f1",
        "stsb": "pearson",
        "qqp": "f1",
        "mnli": "accuracy",
        "mnli-mm": "accuracy",
        "qnli": "accuracy",
        "rte": "accuracy",
        "conll2003": "f1",
    }
    for name, main in expected_main.items():
        spec = get_task(name)
        assert spec.main_metric == main
        assert main in spec.metrics
    assert get_task("mrpc").metrics == ("f1", "accuracy")
    assert get_task("stsb").metrics == ("pearson", "spearman")
    assert get_task("stsb").num_labels == 1
    assert get_task("mnli").num_labels == 3
    assert get_task("rte").label_names == ("entailment", "not_entailment")
    assert get_task("ner").num_labels == 9
    assert get_task("ner").label_names == CONLL2003_LABELS
    assert CONLL2003_LABELS[0] == "O"
    assert get_task("text").kind == "text"
    assert get_task("text").greater_is_better is False
    assert get_task("sst2").id2label() == {0: "negative", 1: "positive"}


def test_register_task_and_duplicates():
    def loader(spec, split, data_dir):
        return [Example("a", label=0), Example("b", label=1), Example("c", label=1)]

    spec = TaskSpec(
        "toy-registered",
        "classification",
        ("no", "yes"),
        ("accuracy",),
        "accuracy",
        loader=loader,
    )
    register_task(spec, aliases=("toy-alias",))
    assert get_task("TOY-ALIAS") is spec
    assert "toy-registered" in list_tasks()
    assert len(load_examples("toy-registered", "train", limit=2)) == 2
    with pytest.raises(DataError, match="already exists"):
        register_task(spec)
    with pytest.raises(DataError, match="already exists"):
        other = TaskSpec("x-new", "regression", None, ("pearson",), "pearson", loader=loader)
        register_task(other, aliases=("sst-2",))


def test_bad_task_spec():
    with pytest.raises(DataError, match="kind"):
        TaskSpec("bad", "summarization", None, (), "loss")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="label_names"):
        TaskSpec("bad", "classification", None, ("accuracy",), "accuracy")
    with pytest.raises(DataError, match="main_metric"):
        TaskSpec("bad", "regression", None, ("pearson",), "accuracy")


def test_normalize_split():
    assert normalize_split("validation") == "dev"
    assert normalize_split("DEV") == "dev"
    assert normalize_split("train") == "train"
    with pytest.raises(DataError, match="unknown split"):
        normalize_split("holdout")


# --------------------------------------------------------------------------- GLUE files

RTE_TSV = (
    "index\tsentence1\tsentence2\tlabel\n"
    '0\tHe said "yes.\tShe agreed.\tentailment\n'
    "1\tCats purr.\tDogs bark.\tnot_entailment\n"
)


def test_glue_reads_classic_layout(tmp_path):
    write(tmp_path / "RTE" / "dev.tsv", RTE_TSV)
    examples = load_examples("rte", "dev", data_dir=tmp_path)
    assert examples == [
        Example('He said "yes.', "She agreed.", 0),
        Example("Cats purr.", "Dogs bark.", 1),
    ]
    # the data root (holding glue/) works as data_dir too
    write(tmp_path / "root" / "glue" / "RTE" / "train.tsv", RTE_TSV)
    assert len(load_examples("rte", "train", data_dir=tmp_path / "root")) == 2
    assert len(load_examples("rte", "validation", data_dir=tmp_path, limit=1)) == 1


def test_glue_dir_env_is_used(tmp_path, monkeypatch):
    write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\na fine film \t1\nawful \t0\n")
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    examples = load_examples("sst-2", "dev")
    assert [e.label for e in examples] == [1, 0]
    assert examples[0].text_b is None


def test_glue_cola_has_no_header_and_mrpc_has_bom(tmp_path):
    write(
        tmp_path / "CoLA" / "train.tsv", "gj04\t1\t\tThe dog barked.\ngj04\t0\t*\tDog the barked.\n"
    )
    cola = load_examples("cola", "train", data_dir=tmp_path)
    assert [(e.text_a, e.label) for e in cola] == [("The dog barked.", 1), ("Dog the barked.", 0)]
    (tmp_path / "MRPC").mkdir()
    (tmp_path / "MRPC" / "dev.tsv").write_bytes(
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA b.\tA b!\n".encode()
    )
    mrpc = load_examples("mrpc", "dev", data_dir=tmp_path)
    assert mrpc == [Example("A b.", "A b!", 1)]


def test_glue_mnli_matched_and_mismatched(tmp_path):
    header = "\t".join(f"c{i}" for i in range(11)) + "\tgold_label\n"
    row = "\t".join(["x"] * 8 + ["Premise.", "Hypothesis."] + ["y", "{}"]) + "\n"
    write(tmp_path / "MNLI" / "dev_matched.tsv", header + row.format("neutral"))
    write(tmp_path / "MNLI" / "dev_mismatched.tsv", header + row.format("contradiction"))
    assert load_examples("mnli", "dev", data_dir=tmp_path)[0].label == 2
    assert load_examples("mnli-mm", "dev", data_dir=tmp_path)[0].label == 0


def test_glue_stsb_scores_are_floats(tmp_path):
    header = (
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    )
    row = "0\tg\tf\t2012\t0\tnone\tnone\tA man.\tA person.\t3.800\n"
    write(tmp_path / "STS-B" / "dev.tsv", header + row)
    (example,) = load_examples("stsb", "dev", data_dir=tmp_path)
    assert example.label == pytest.approx(3.8)
    assert isinstance(example.label, float)


def test_glue_wrong_column_count_names_file_and_line(tmp_path):
    path = write(tmp_path / "RTE" / "dev.tsv", RTE_TSV + "2\tonly two\tcolumns\n")
    with pytest.raises(DataError) as info:
        load_examples("rte", "dev", data_dir=tmp_path)
    message = str(info.value)
    assert str(path) in message and "line 4" in message
    assert "expected 4" in message and "found 3" in message


def test_glue_unknown_label_names_file_line_label_and_allowed(tmp_path):
    path = write(tmp_path / "RTE" / "train.tsv", RTE_TSV + "2\ta\tb\tcontradiction\n")
    with pytest.raises(DataError) as info:
        load_examples("rte", "train", data_dir=tmp_path)
    message = str(info.value)
    assert str(path) in message and "line 4" in message
    assert "'contradiction'" in message
    assert "entailment, not_entailment" in message


def test_glue_non_numeric_score_names_file_and_line(tmp_path):
    header = (
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    )
    good = "0\tg\tf\t2012\t0\tnone\tnone\tA man.\tA person.\t3.8\n"
    bad = "1\tg\tf\t2012\t0\tnone\tnone\tA man.\tA person.\thigh\n"
    path = write(tmp_path / "STS-B" / "train.tsv", header + good + bad)
    with pytest.raises(DataError) as info:
        load_examples("stsb", "train", data_dir=tmp_path)
    assert str(path) in str(info.value) and "line 3" in str(info.value)
    assert "'high'" in str(info.value)


def test_glue_empty_split(tmp_path):
    path = write(tmp_path / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(DataError) as info:
        load_examples("rte", "dev", data_dir=tmp_path)
    assert str(path) in str(info.value) and "no examples" in str(info.value)


def test_glue_test_split_is_refused(tmp_path):
    with pytest.raises(DataError, match="no\\s+labels|carry no labels"):
        load_examples("rte", "test", data_dir=tmp_path)


def test_glue_missing_without_hub_names_path_and_variables(tmp_path):
    with pytest.raises(DataError) as info:
        load_glue(get_task("rte"), "dev", data_dir=tmp_path, allow_hub=False)
    message = str(info.value)
    assert str(tmp_path / "RTE" / "dev.tsv") in message
    assert "GLUE_DIR" in message and "GEARSHIFT_DATA" in message


def test_glue_missing_and_hub_unreachable_fails_fast(tmp_path, monkeypatch):
    # Online mode, but the hub endpoint refuses connections: the probe must fail at once.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_examples("qnli", "train", data_dir=tmp_path)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "no local copy at " + str(tmp_path / "QNLI" / "train.tsv") in message
    assert "hub is unreachable" in message
    assert "GLUE_DIR" in message and "GEARSHIFT_DATA" in message


def test_glue_missing_in_offline_mode_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_examples("rte", "dev", data_dir=tmp_path / "empty")
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert str(tmp_path / "empty" / "RTE" / "dev.tsv") in message
    assert "hub is unreachable" in message and "offline" in message
    assert "GLUE_DIR" in message


def test_glue_not_utf8(tmp_path):
    path = tmp_path / "SST-2" / "dev.tsv"
    path.parent.mkdir()
    path.write_bytes(b"sentence\tlabel\ncaf\xe9 \t1\n")
    with pytest.raises(DataError) as info:
        load_examples("sst2", "dev", data_dir=tmp_path)
    assert str(path) in str(info.value) and "UTF-8" in str(info.value)


# --------------------------------------------------------------------------- CoNLL

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
"""


def test_conll_reader(tmp_path):
    write(tmp_path / "ner" / "conll2003" / "dev.txt", CONLL)
    examples = load_examples("conll2003", "dev", data_dir=tmp_path)
    assert len(examples) == 3
    first = examples[0]
    assert first.words == ["EU", "rejects", "German", "call", "."]
    names = [CONLL2003_LABELS[i] for i in first.label]  # type: ignore[union-attr]
    assert names == ["B-ORG", "O", "B-MISC", "O", "O"]
    assert first.text_a == "EU rejects German call ."
    assert examples[2].words == ["BRUSSELS"]  # the last sentence has no trailing blank line
    assert len(load_examples("ner", "dev", data_dir=tmp_path, limit=2)) == 2


def test_conll_env_var(tmp_path, monkeypatch):
    write(tmp_path / "ner" / "conll2003" / "train.txt", CONLL)
    monkeypatch.setenv("GEARSHIFT_DATA", str(tmp_path))
    assert len(load_examples("ner", "train")) == 3


def test_conll_malformed_line(tmp_path):
    path = write(tmp_path / "dev.txt", CONLL.replace("rejects VBZ B-VP O", "rejects"))
    with pytest.raises(DataError) as info:
        load_examples("ner", "dev", data_dir=tmp_path)
    assert str(path) in str(info.value) and "line 4" in str(info.value)


def test_conll_unknown_tag(tmp_path):
    path = write(tmp_path / "dev.txt", CONLL.replace("B-MISC", "B-DATE"))
    with pytest.raises(DataError) as info:
        load_examples("ner", "dev", data_dir=tmp_path)
    message = str(info.value)
    assert str(path) in message and "line 5" in message and "'B-DATE'" in message
    assert "B-PER" in message and "I-MISC" in message


def test_conll_empty_and_missing(tmp_path):
    path = write(tmp_path / "dev.txt", "-DOCSTART- -X- -X- O\n\n")
    with pytest.raises(DataError) as info:
        load_examples("ner", "dev", data_dir=tmp_path)
    assert str(path) in str(info.value) and "no sentences" in str(info.value)
    with pytest.raises(DataError) as info:
        load_examples("ner", "train", data_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "train.txt") in str(info.value)
    assert "GEARSHIFT_DATA" in str(info.value)


# --------------------------------------------------------------------------- raw text

WIKI = """
 = Homarus gammarus =

 Homarus gammarus is a lobster . It lives in the sea .

 = = Description = =

 It is blue above , with spots .
"""


def test_wikitext_reader_skips_headings(tmp_path):
    write(tmp_path / "text" / "wikitext-2" / "valid.txt", WIKI)
    examples = load_examples("wikitext2", "dev", data_dir=tmp_path)
    assert [e.text_a for e in examples] == [
        "Homarus gammarus is a lobster . It lives in the sea .",
        "It is blue above , with spots .",
    ]
    assert all(e.label is None for e in examples)
    with pytest.raises(DataError) as info:
        load_examples("text", "test", data_dir=tmp_path)
    assert "test.txt" in str(info.value) and "GEARSHIFT_DATA" in str(info.value)


def test_wikitext_only_headings_is_empty(tmp_path):
    path = write(tmp_path / "valid.txt", " = Title = \n\n")
    with pytest.raises(DataError) as info:
        load_examples("text", "dev", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_iter_texts_and_sentences():
    examples = [
        Example("First one. Second one!", "Pair text."),
        Example("EU rejects", None, [3, 0], ["EU", "rejects"]),
        Example("", None),
    ]
    assert list(iter_texts(examples)) == ["First one. Second one!", "Pair text.", "EU rejects"]
    assert list(iter_texts(examples, sentences=True)) == [
        "First one.",
        "Second one!",
        "Pair text.",
        "EU rejects",
    ]
    assert split_sentences("It lives in the sea . It is blue .") == [
        "It lives in the sea .",
        "It is blue .",
    ]


# --------------------------------------------------------------------------- custom tasks


def test_custom_csv_by_column_names(tmp_path):
    train = write(
        tmp_path / "train.csv",
        'id,review,stars\n1,"Great, really great",5\n2,Bad,1\n3,"So ""so""",3\n4,Fine,10\n',
    )
    dev = write(tmp_path / "dev.csv", "id,review,stars\n9,Okay,3\n")
    config = CustomTaskConfig(
        path=train, dev_path=dev, text_column="review", label_column="stars", name="reviews-csv"
    )
    task = make_custom_task(config)
    assert task.label_names == ("1", "3", "5", "10")  # integers sorted as numbers
    assert task.metrics == ("accuracy", "macro_f1") and task.main_metric == "accuracy"
    assert get_task("reviews-csv") is task
    train_examples = load_examples("reviews-csv", "train")
    assert train_examples[0] == Example("Great, really great", None, 2)
    assert train_examples[2].text_a == 'So "so"'
    assert load_examples(task, "dev") == [Example("Okay", None, 1)]


def test_custom_tsv_without_header_by_index(tmp_path):
    train = write(tmp_path / "data.tsv", "".join(f"q{i}\ta{i}\t{i * 0.5}\n" for i in range(20)))
    config = CustomTaskConfig(
        path=train,
        text_column=0,
        text_pair_column="1",  # a digit string from a CLI flag is an index
        label_column=2,
        kind="regression",
        has_header=False,
        dev_fraction=0.25,
        seed=3,
        name="sim-tsv",
    )
    task = make_custom_task(config)
    assert task.kind == "regression" and task.num_labels == 1
    train_ex = load_examples(task, "train")
    dev_ex = load_examples(task, "dev")
    assert len(dev_ex) == 5 and len(train_ex) == 15
    texts = sorted(e.text_a for e in train_ex + dev_ex)
    assert texts == sorted(f"q{i}" for i in range(20))  # disjoint, and together the whole file
    assert dev_ex[0].text_b == "a" + dev_ex[0].text_a[1:]
    assert load_examples(task, "dev") == dev_ex  # the same seed gives the same split
    other = make_custom_task(CustomTaskConfig(**{**config.__dict__, "seed": 4}), register=False)
    assert load_examples(other, "dev") != dev_ex


def test_custom_jsonl_and_json_config(tmp_path):
    lines = [
        {"text": "good", "label": "pos"},
        {"text": "bad", "label": "neg"},
        {"text": "fine", "label": "pos"},
    ]
    write(tmp_path / "data" / "train.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    write(tmp_path / "data" / "dev.jsonl", json.dumps({"text": "meh", "label": "neg"}) + "\n")
    config_path = write(
        tmp_path / "task.json",
        json.dumps(
            {
                "name": "sentiment-jsonl",
                "path": "data/train.jsonl",
                "dev_path": "data/dev.jsonl",
                "text_column": "text",
                "label_column": "label",
                "label_names": ["neg", "pos"],
            }
        ),
    )
    config = CustomTaskConfig.from_json(config_path)
    assert config.path == tmp_path / "data" / "train.jsonl"
    assert config.resolved_format() == "jsonl"
    task = make_custom_task(config)
    assert task.metrics == ("accuracy", "f1")
    assert [e.label for e in load_examples(task, "train")] == [1, 0, 1]
    assert load_examples(task, "dev") == [Example("meh", None, 0)]
    assert CustomTaskConfig.from_dict(config.to_dict()) == config


def test_custom_missing_column_lists_columns(tmp_path):
    path = write(tmp_path / "train.csv", "sentence,label\nhi,1\nho,0\n")
    config = CustomTaskConfig(path=path, text_column="text", label_column="label", name="c1")
    with pytest.raises(DataError) as info:
        make_custom_task(config)
    message = str(info.value)
    assert str(path) in message and "'text'" in message
    assert "'sentence'" in message and "'label'" in message


def test_custom_unknown_dev_label(tmp_path):
    train = write(tmp_path / "train.csv", "t,l\na,x\nb,y\n")
    dev = write(tmp_path / "dev.csv", "t,l\nc,x\nd,z\n")
    task = make_custom_task(
        CustomTaskConfig(path=train, dev_path=dev, text_column="t", label_column="l", name="c2")
    )
    with pytest.raises(DataError) as info:
        load_examples(task, "dev")
    message = str(info.value)
    assert str(dev) in message and "line 3" in message and "'z'" in message
    assert "x, y" in message


def test_custom_bad_rows(tmp_path):
    path = write(tmp_path / "train.csv", "t,score\na,1.5\nb,1.0,extra\n")
    config = CustomTaskConfig(
        path=path, text_column="t", label_column="score", kind="regression", name="c3"
    )
    task = make_custom_task(config)
    with pytest.raises(DataError) as info:
        load_examples(task, "train")
    assert str(path) in str(info.value) and "line 3" in str(info.value)

    path.write_text("t,score\na,1.5\nb,lots\nc,2\n")
    with pytest.raises(DataError) as info:
        load_examples(task, "train")
    assert str(path) in str(info.value) and "line 3" in str(info.value)
    assert "'lots'" in str(info.value)

    bad_json = write(tmp_path / "x.jsonl", '{"t": "a", "l": 1}\n{"t": "b"\n')
    config = CustomTaskConfig(path=bad_json, text_column="t", label_column="l", name="c4")
    with pytest.raises(DataError) as info:
        make_custom_task(config)
    assert str(bad_json) in str(info.value) and "line 2" in str(info.value)

    missing_key = write(tmp_path / "y.jsonl", '{"t": "a", "l": 1}\n{"t": "b"}\n')
    config = CustomTaskConfig(path=missing_key, text_column="t", label_column="l", name="c5")
    with pytest.raises(DataError) as info:
        make_custom_task(config)
    assert str(missing_key) in str(info.value) and "line 2" in str(info.value)
    assert "'l'" in str(info.value)


def test_custom_unclosed_quote_names_the_line_it_opens_on(tmp_path):
    path = write(tmp_path / "q.csv", 'text,label\na,1\nb,0\n"c never closed,1\nd,0\n')
    config = CustomTaskConfig(path=path, text_column="text", label_column="label", name="cq")
    with pytest.raises(DataError) as info:
        make_custom_task(config)
    msg = str(info.value)
    assert "line 4" in msg and "not closed" in msg and "line 5:" not in msg


def test_custom_headerless_file_is_detected_not_silently_shortened(tmp_path):
    """Columns given by index on a file whose first line is an example: refused with the
    fix (--no-header), never read as a header; declared headerless, every row is kept."""
    path = write(tmp_path / "plain.tsv", "good movie\t1\nbad movie\t0\nfine\t1\nmeh\t0\n")
    config = CustomTaskConfig(path=path, text_column="0", label_column="1", name="hl")
    with pytest.raises(DataError, match="--no-header"):
        make_custom_task(config)
    config = CustomTaskConfig(
        path=path, text_column="0", label_column="1", name="hl", has_header=False
    )
    task = make_custom_task(config)
    assert len(load_examples(task, "train")) + len(load_examples(task, "dev")) == 4
    # a real header read by index is still fine: its label cell is no label
    with_header = write(tmp_path / "h.tsv", "text\tlabel\ngood\t1\nbad\t0\nok\t1\n")
    task = make_custom_task(
        CustomTaskConfig(path=with_header, text_column="0", label_column="1", name="hh")
    )
    assert len(load_examples(task, "train")) + len(load_examples(task, "dev")) == 3


def test_custom_config_errors(tmp_path):
    path = write(tmp_path / "train.csv", "t,l\na,x\nb,y\n")
    with pytest.raises(DataError, match="kind"):
        CustomTaskConfig(path=path, text_column="t", label_column="l", kind="ranking")
    with pytest.raises(DataError, match="extension"):
        CustomTaskConfig(path=tmp_path / "train.xlsx", text_column="t", label_column="l")
    with pytest.raises(DataError, match="unknown key"):
        CustomTaskConfig.from_dict({"path": "a.csv", "text_column": 0, "label_col": 1})
    with pytest.raises(DataError, match="missing label_column"):
        CustomTaskConfig.from_dict({"path": "a.csv", "text_column": 0})
    bad_json = write(tmp_path / "task.json", '{"path": "train.csv",}')
    with pytest.raises(DataError) as info:
        CustomTaskConfig.from_json(bad_json)
    assert str(bad_json) in str(info.value) and "line 1" in str(info.value)
    with pytest.raises(DataError, match="built-in"):
        make_custom_task(CustomTaskConfig(path=path, text_column="t", label_column="l", name="RTE"))
    with pytest.raises(DataError) as info:
        make_custom_task(CustomTaskConfig(path=path, text_column=5, label_column="l", name="c6"))
    assert "out of range" in str(info.value) and str(path) in str(info.value)
    with pytest.raises(DataError) as info:
        make_custom_task(
            CustomTaskConfig(
                path=tmp_path / "missing.csv", text_column="t", label_column="l", name="c7"
            )
        )
    assert str(tmp_path / "missing.csv") in str(info.value)
    header_only = write(tmp_path / "empty.csv", "t,l\n")
    with pytest.raises(DataError) as info:
        make_custom_task(CustomTaskConfig(path=header_only, text_column="t", label_column="l"))
    assert str(header_only) in str(info.value) and "no examples" in str(info.value)
    tiny = write(tmp_path / "tiny.csv", "t,l\na,x\n")
    task = make_custom_task(
        CustomTaskConfig(
            path=tiny, text_column="t", label_column="l", label_names=["x", "y"], name="c8"
        )
    )
    with pytest.raises(DataError, match="too few"):
        load_examples(task, "train")


# --------------------------------------------------------------------------- encoding


def test_encode_classification_and_pairs(tokenizer):
    task = get_task("rte")
    examples = [Example("A man sleeps.", "Someone rests.", 0), Example("Hi.", "Bye.", 1)]
    features = encode_examples(examples, tokenizer, task)
    expected = tokenizer("A man sleeps.", "Someone rests.")
    assert features[0]["input_ids"] == expected["input_ids"]
    assert features[0]["token_type_ids"] == expected["token_type_ids"]
    assert features[0]["attention_mask"] == [1] * len(expected["input_ids"])
    assert features[0]["labels"] == 0 and isinstance(features[1]["labels"], int)
    assert len(features[1]["input_ids"]) < len(features[0]["input_ids"])  # no padding here

    regression = encode_examples([Example("a", "b", 3.5)], tokenizer, "stsb")
    assert regression[0]["labels"] == 3.5 and isinstance(regression[0]["labels"], float)

    unlabeled = encode_examples([Example("a")], tokenizer, "sst2")
    assert "labels" not in unlabeled[0]

    with pytest.raises(DataError, match="second text"):
        encode_examples([Example("a", "b", 0), Example("c", None, 1)], tokenizer, task)
    with pytest.raises(DataError, match="out of range"):
        encode_examples([Example("a", None, 2)], tokenizer, "sst2")


def test_encode_truncation_warns_once(tokenizer, caplog):
    long_text = " ".join(["word"] * 300)
    examples = [Example(long_text, None, 1), Example("short", None, 0), Example(long_text, None, 0)]
    with caplog.at_level(logging.WARNING, logger="gearshift.data"):
        features = encode_examples(examples, tokenizer, "sst2", max_length=32)
    assert [len(f["input_ids"]) for f in features] == [32, 3, 32]
    assert features[0]["input_ids"][-1] == tokenizer.sep_token_id
    records = [r for r in caplog.records if r.name == "gearshift.data"]
    assert len(records) == 1
    assert "2 of 3" in records[0].getMessage() and "32" in records[0].getMessage()

    caplog.clear()
    very_long = Example(" ".join(["word"] * 700), None, 1)
    with caplog.at_level(logging.WARNING, logger="gearshift.data"):
        (feature,) = encode_examples([very_long], tokenizer, "sst2", max_length=1024)
    assert len(feature["input_ids"]) == 512  # clamped to the model's positions
    assert "512" in caplog.records[0].getMessage()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gearshift.data"):
        encode_examples([Example("short", None, 0)], tokenizer, "sst2", max_length=32)
    assert not [r for r in caplog.records if r.name == "gearshift.data"]


def test_encode_token_classification_aligns_first_subtoken(tokenizer):
    words = ["Gearshiftiness", "hit", "Washington", "."]
    tags = [CONLL2003_LABELS.index(t) for t in ("B-ORG", "O", "B-LOC", "O")]
    (feature,) = encode_examples([Example(" ".join(words), None, tags, words)], tokenizer, "ner")
    encoding = tokenizer(words, is_split_into_words=True)
    assert feature["input_ids"] == encoding["input_ids"]
    word_ids = encoding.word_ids()
    assert word_ids.count(0) > 1  # the made-up word is split into sub-tokens
    labels = feature["labels"]
    assert len(labels) == len(feature["input_ids"])
    assert labels[0] == -100 and labels[-1] == -100
    for position, word_id in enumerate(word_ids):
        first = word_id is not None and word_ids.index(word_id) == position
        assert labels[position] == (tags[word_id] if first else -100)
    assert [label for label in labels if label != -100] == tags


def test_align_word_labels():
    assert align_word_labels([None, 0, 0, 1, None], [5, 7]) == [-100, 5, -100, 7, -100]


def test_encode_token_classification_truncation(tokenizer, caplog):
    words = ["token"] * 50
    with caplog.at_level(logging.WARNING, logger="gearshift.data"):
        (feature,) = encode_examples(
            [Example(" ".join(words), None, [0] * 50, words)], tokenizer, "ner", max_length=16
        )
    assert len(feature["input_ids"]) == 16 and len(feature["labels"]) == 16
    assert feature["labels"][-1] == -100 and feature["labels"].count(0) == 14
    assert "1 of 1" in caplog.records[0].getMessage()


def test_collators_pad_dynamically_or_to_fixed_length(tokenizer):
    examples = [Example("a b c d e f g", None, 1), Example("a", None, 0)]
    features = encode_examples(examples, tokenizer, "sst2")
    batch = make_collator(tokenizer, "sst2")(features)
    assert batch["input_ids"].shape == (2, 9)
    assert batch["attention_mask"][1].tolist() == [1, 1, 1] + [0] * 6
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long
    assert make_collator(tokenizer, "sst2", pad_to_multiple_of=8)(features)["input_ids"].shape == (
        2,
        16,
    )
    assert make_collator(tokenizer, "sst2", pad_to_length=128)(features)["input_ids"].shape == (
        2,
        128,
    )

    stsb = encode_examples([Example("a", "b", 2.5), Example("c", "d e", 4.0)], tokenizer, "stsb")
    batch = make_collator(tokenizer, "stsb")(stsb)
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [2.5, 4.0]

    words = [["EU", "rejects"], ["Peter"]]
    ner = encode_examples(
        [Example(" ".join(w), None, [3] * len(w), w) for w in words], tokenizer, "ner"
    )
    batch = make_collator(tokenizer, "ner")(ner)
    assert batch["labels"].shape == batch["input_ids"].shape == (2, 4)
    assert batch["labels"][1].tolist() == [-100, 3, -100, -100]
    fixed = make_collator(tokenizer, "ner", pad_to_length=128)(ner)
    assert fixed["labels"].shape == (2, 128)


def test_collator_needs_a_pad_token(tokenizer):
    import copy

    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    with pytest.raises(DataError, match="no padding token"):
        make_collator(no_pad, "sst2")


def test_dataloader_is_reproducible(tokenizer):
    examples = [Example("word " * (i % 7 + 1), None, i % 2) for i in range(40)]
    features = encode_examples(examples, tokenizer, "sst2")
    collator = make_collator(tokenizer, "sst2")

    def order(**kwargs):
        loader = make_dataloader(features, collator, batch_size=8, **kwargs)
        return [batch["input_ids"].shape[1] for batch in loader], [
            batch["labels"].tolist() for batch in loader
        ]

    assert order(shuffle=True, seed=1) == order(shuffle=True, seed=1)
    assert order(shuffle=True, seed=1) != order(shuffle=True, seed=2)
    plain = make_dataloader(features, collator, batch_size=8)
    first = next(iter(plain))
    assert first["labels"].tolist() == [i % 2 for i in range(8)]

    # LengthGroupedSampler sorts within mega-batches of up to 50 batches: use a bigger set
    many = encode_examples(
        [Example("word " * (i % 13 + 1), None, i % 2) for i in range(400)], tokenizer, "sst2"
    )

    def spreads(loader):
        result = []
        for batch in loader:
            lengths = batch["attention_mask"].sum(dim=1)
            result.append(int(lengths.max() - lengths.min()))
        return result

    grouped = spreads(make_dataloader(many, collator, 8, shuffle=True, group_by_length=True))
    ungrouped = spreads(make_dataloader(many, collator, 8, shuffle=True))
    assert len(grouped) == len(ungrouped) == 50
    assert sum(grouped) * 4 < sum(ungrouped)  # batches hold similar lengths

    sorted_loader = make_dataloader(features, collator, batch_size=8, group_by_length=True)
    widths = [batch["input_ids"].shape[1] for batch in sorted_loader]
    assert widths == sorted(widths, reverse=True)


# --------------------------------------------------------------------------- metrics


def test_classification_metrics_match_sklearn():
    # confusion matrix: TP=5, TN=3, FP=1, FN=2
    refs = [1] * 5 + [0] * 3 + [0] + [1] * 2
    preds = [1] * 5 + [0] * 3 + [1] + [0] * 2
    scores = compute_metrics("cola", preds, refs)
    assert scores["matthews"] == pytest.approx(100 * 13 / math.sqrt(6 * 7 * 4 * 5))
    assert scores["matthews"] == pytest.approx(100 * matthews_corrcoef(refs, preds))
    assert scores["accuracy"] == pytest.approx(100 * 8 / 11)
    mrpc = compute_metrics("mrpc", preds, refs)
    assert list(mrpc) == ["f1", "accuracy"]
    assert mrpc["f1"] == pytest.approx(100 * 10 / 13)
    assert mrpc["f1"] == pytest.approx(100 * f1_score(refs, preds))

    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.3, 0.2]])
    assert compute_metrics("sst2", logits, [1, 0, 1]) == {"accuracy": pytest.approx(200 / 3)}
    mnli_logits = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    assert compute_metrics("mnli", mnli_logits, torch.tensor([1, 0]))["accuracy"] == 50.0
    assert compute_metrics("cola", [1, 1, 1], [1, 0, 1])["matthews"] == 0.0
    with pytest.raises(ValueError, match="predictions"):
        compute_metrics("sst2", [1, 0], [1])


def test_regression_metrics_match_scipy():
    refs = [0.0, 1.0, 2.5, 3.0, 4.2, 5.0]
    preds = np.array([[0.3], [0.8], [2.0], [3.5], [3.9], [4.4]])
    scores = compute_metrics("stsb", preds, refs)
    assert scores["pearson"] == pytest.approx(100 * pearsonr(preds[:, 0], refs)[0])
    assert scores["spearman"] == pytest.approx(100 * spearmanr(preds[:, 0], refs)[0])
    assert scores["spearman"] == pytest.approx(100.0)  # same ranking
    tied = compute_metrics("stsb", [1.0, 2.0, 2.0, 3.0], [1.0, 3.0, 2.0, 4.0])
    assert tied["spearman"] == pytest.approx(100 * spearmanr([1, 2, 2, 3], [1, 3, 2, 4])[0])
    assert compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == {
        "pearson": 0.0,
        "spearman": 0.0,
    }


def test_token_classification_metrics_use_seqeval_entities():
    tag = CONLL2003_LABELS.index
    # gold: PER (2 tokens), LOC; predicted: PER right, LOC predicted as ORG
    refs = [[-100, tag("B-PER"), tag("I-PER"), -100, tag("O"), tag("B-LOC"), -100, -100]]
    preds = [[tag("B-LOC"), tag("B-PER"), tag("I-PER"), tag("B-ORG"), tag("O"), tag("B-ORG"), 0, 0]]
    scores = compute_metrics("ner", preds, refs)
    assert scores["f1"] == pytest.approx(50.0)
    assert scores["precision"] == pytest.approx(50.0)
    assert scores["recall"] == pytest.approx(50.0)
    assert scores["accuracy"] == pytest.approx(75.0)

    logits = np.full((1, 8, 9), -1.0)
    for position, label in enumerate(refs[0]):
        logits[0, position, max(label, 0)] = 1.0
    assert compute_metrics("ner", logits, refs)["f1"] == 100.0
    # ragged, unpadded rows
    ragged_preds = [[tag("B-PER"), tag("O")], [tag("B-LOC")]]
    ragged_refs = [[tag("B-PER"), tag("O")], [tag("B-MISC")]]
    ragged = compute_metrics("ner", ragged_preds, ragged_refs)
    assert ragged["f1"] == pytest.approx(50.0)


def test_text_task_has_no_metrics():
    with pytest.raises(DataError, match="no metrics"):
        compute_metrics("wikitext2", [1.0], [1.0])


def test_constant_score_is_the_best_constant_prediction():
    refs = [1, 1, 1, 0]
    assert constant_score("sst2", refs) == pytest.approx(75.0)  # the majority class
    # MRPC's F1 of always answering "paraphrase": precision 3/4, recall 1
    assert constant_score("mrpc", refs) == pytest.approx(100 * 2 * 0.75 / 1.75)
    assert constant_score("cola", refs) == 0.0  # Matthews of a constant
    assert constant_score("stsb", [0.5, 3.0, 4.5]) == 0.0  # a constant has no correlation
    with pytest.raises(DataError, match="no constant-prediction floor"):
        constant_score("conll2003", [[0, 1]])
    with pytest.raises(DataError, match="no references"):
        constant_score("sst2", [])


def test_pack_sentences_uses_long_paragraphs_in_full():
    from gearshift.data.raw import pack_sentences

    para = " ".join(f"Sentence number {i} has five words." for i in range(10))
    packed = pack_sentences([para, "Short one."], max_words=12)
    assert " ".join(packed) == para + " Short one."
    assert all(len(p.split()) <= 12 for p in packed)
    assert len(packed) == 6  # 2 sentences (10 words) per passage, then the short text
    with pytest.raises(DataError):
        pack_sentences([para], max_words=0)
