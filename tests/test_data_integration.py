"""Integration tests of gearshift.data on the real files under shared/data.

The data is found the way CI finds it: GLUE_DIR / GEARSHIFT_DATA when exported, else a
``shared/data`` folder beside the checkout (gearshift.paths). Expected counts are those of
shared/data/README.md's sanity tables.
"""

from __future__ import annotations

import statistics
from collections import Counter

import pytest

from gearshift import paths
from gearshift.data import (
    CONLL2003_LABELS,
    compute_metrics,
    encode_examples,
    get_task,
    iter_texts,
    load_examples,
    make_collator,
    make_dataloader,
)
from gearshift.data.text import is_heading

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data_root():
    root = paths.data_root()
    if root is None or not root.is_dir():
        pytest.fail(
            "no data root: export GEARSHIFT_DATA (and GLUE_DIR) or run beside ../shared/data"
        )
    glue = paths.glue_dir()
    assert glue is not None and (glue / "SST-2" / "dev.tsv").is_file(), f"no GLUE files in {glue}"
    return root


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(paths.resolve_model_name("minilm-l6"))


GLUE_COUNTS = [
    ("cola", "train", 8551, {0: 2528, 1: 6023}),
    ("cola", "dev", 1043, {0: 322, 1: 721}),
    ("sst2", "train", 67349, {0: 29780, 1: 37569}),
    ("sst2", "dev", 872, {0: 428, 1: 444}),
    ("mrpc", "train", 3668, {0: 1194, 1: 2474}),
    ("mrpc", "dev", 408, {0: 129, 1: 279}),
    ("rte", "train", 2490, {0: 1249, 1: 1241}),  # 0 = entailment
    ("rte", "dev", 277, {0: 146, 1: 131}),
    ("qnli", "dev", 5463, {0: 2702, 1: 2761}),
]


@pytest.mark.parametrize(("task", "split", "rows", "labels"), GLUE_COUNTS)
def test_glue_row_and_label_counts(data_root, task, split, rows, labels):
    examples = load_examples(task, split)
    assert len(examples) == rows
    assert dict(Counter(e.label for e in examples)) == labels
    assert all(e.text_a for e in examples)
    if get_task(task).is_pair:
        assert all(e.text_b for e in examples)
    else:
        assert all(e.text_b is None for e in examples)


@pytest.mark.parametrize(("split", "rows", "mean"), [("train", 5749, 2.701), ("dev", 1500, 2.364)])
def test_stsb_scores(data_root, split, rows, mean):
    scores = [e.label for e in load_examples("sts-b", split)]
    assert len(scores) == rows
    assert statistics.mean(scores) == pytest.approx(mean, abs=5e-4)
    assert min(scores) == 0.0 and max(scores) == 5.0


def test_glue_fields_are_not_merged_or_altered(data_root):
    # With quoting on, MRPC/STS-B/QNLI rows merge; the first MRPC dev pair opens a quote.
    mrpc = load_examples("mrpc", "dev")
    assert mrpc[0].text_b.startswith('"The foodservice pie business')
    assert mrpc[0].text_a.startswith("He said the foodservice pie")  # BOM not in the header
    sst = load_examples("sst2", "dev", limit=1)[0]
    assert sst.text_a == "it 's a charming and often affecting journey . "


@pytest.mark.parametrize(
    ("split", "sentences", "tokens", "entities"),
    [
        ("train", 14041, 203621, {"LOC": 7140, "MISC": 3438, "ORG": 6321, "PER": 6600}),
        ("dev", 3250, 51362, {"LOC": 1837, "MISC": 922, "ORG": 1341, "PER": 1842}),
    ],
)
def test_conll_counts(data_root, split, sentences, tokens, entities):
    examples = load_examples("conll2003", split)
    assert len(examples) == sentences
    assert sum(len(e.words) for e in examples) == tokens
    assert all(len(e.words) == len(e.label) for e in examples)
    tags = Counter(CONLL2003_LABELS[i] for e in examples for i in e.label)
    assert {tag[2:]: n for tag, n in tags.items() if tag.startswith("B-")} == entities


@pytest.mark.parametrize(
    ("split", "file", "paragraphs", "tokens"),
    [("dev", "valid.txt", 1841, 213886), ("test", "test.txt", 2185, 241211)],
)
def test_wikitext_paragraphs(data_root, split, file, paragraphs, tokens):
    examples = load_examples("wikitext2", split)
    assert len(examples) == paragraphs
    raw_lines = (data_root / "text" / "wikitext-2" / file).read_text(encoding="utf-8").splitlines()
    headings = [line for line in raw_lines if line.strip() and is_heading(line)]
    assert len(headings) > 100
    # every whitespace token of the file is in a paragraph or a heading, none is lost
    words = sum(len(e.text_a.split()) for e in examples) + sum(len(h.split()) for h in headings)
    assert words == tokens
    # headings look like "= Title =" (legend lines such as "= National record" are text)
    assert not any(e.text_a.startswith("= ") and e.text_a.endswith(" =") for e in examples)
    sentences = list(iter_texts(examples[:20], sentences=True))
    assert len(sentences) > 40 and all(s.endswith((".", "!", "?", '"', ")")) for s in sentences[:5])


def test_encode_real_sst2_and_baseline_metrics(data_root, tokenizer, caplog):
    task = get_task("sst2")
    examples = load_examples(task, "dev")
    with caplog.at_level("WARNING", logger="gearshift.data"):
        features = encode_examples(examples, tokenizer, task, max_length=128)
    assert len(features) == 872 and not caplog.records  # no SST-2 dev sentence exceeds 128
    assert max(len(f["input_ids"]) for f in features) == 55
    batches = list(make_dataloader(features, make_collator(tokenizer, task), batch_size=64))
    labels = [label for batch in batches for label in batch["labels"].tolist()]
    assert labels == [e.label for e in examples]
    majority = compute_metrics(task, [1] * len(labels), labels)
    assert majority["accuracy"] == pytest.approx(100 * 444 / 872)


def test_real_baseline_metrics(data_root):
    mrpc = [e.label for e in load_examples("mrpc", "dev")]
    all_positive = compute_metrics("mrpc", [1] * len(mrpc), mrpc)
    assert all_positive["f1"] == pytest.approx(100 * 2 * 279 / (2 * 279 + 129))
    assert all_positive["accuracy"] == pytest.approx(100 * 279 / 408)
    cola = [e.label for e in load_examples("cola", "dev")]
    assert compute_metrics("cola", [1] * len(cola), cola)["matthews"] == 0.0
    stsb = [e.label for e in load_examples("stsb", "dev")]
    assert compute_metrics("stsb", stsb, stsb) == {
        "pearson": pytest.approx(100.0),
        "spearman": pytest.approx(100.0),
    }


def test_encode_real_conll_dev_keeps_every_word(data_root, tokenizer):
    task = get_task("ner")
    examples = load_examples(task, "dev")
    features = encode_examples(examples, tokenizer, task, max_length=512)
    labelled = [[label for label in f["labels"] if label != -100] for f in features]
    assert sum(len(row) for row in labelled) == 51362
    assert labelled == [e.label for e in examples]
    references = [f["labels"] for f in features]
    assert compute_metrics(task, references, references)["f1"] == 100.0
    all_outside = [[0 if label != -100 else -100 for label in row] for row in references]
    scores = compute_metrics(task, all_outside, references)
    assert scores["f1"] == 0.0 and scores["recall"] == 0.0
