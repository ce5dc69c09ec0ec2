"""Shared fixtures: tiny random Hugging Face models of every family, saved to disk once."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILIES = ["bert", "roberta", "albert", "distilbert", "gpt2"]
HEAD_CLASSES = {
    None: "Model",
    "classification": "ForSequenceClassification",
    "token_classification": "ForTokenClassification",
}


def tiny_hf_config(family: str, **overrides):
    """A small random config of ``family`` (hidden 32, 3 layers, 4 heads)."""
    import transformers as T

    if family == "bert":
        cfg = T.BertConfig(
            vocab_size=99,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=64,
            type_vocab_size=2,
        )
    elif family == "roberta":
        cfg = T.RobertaConfig(
            vocab_size=99,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=70,
            type_vocab_size=1,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
    elif family == "albert":
        cfg = T.AlbertConfig(
            vocab_size=99,
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=4,
            num_hidden_groups=2,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=64,
            pad_token_id=0,
        )
    elif family == "distilbert":
        cfg = T.DistilBertConfig(
            vocab_size=99,
            dim=32,
            n_layers=3,
            n_heads=4,
            hidden_dim=48,
            max_position_embeddings=64,
            pad_token_id=0,
        )
    elif family == "gpt2":
        cfg = T.GPT2Config(
            vocab_size=99,
            n_embd=32,
            n_layer=3,
            n_head=4,
            n_positions=64,
            bos_token_id=98,
            eos_token_id=98,
            pad_token_id=98,
        )
    else:
        raise ValueError(family)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def make_hf_model(family: str, head: str | None = None, num_labels: int = 3, seed: int = 0):
    """A random HF model of ``family`` with ``head`` (None, classification, token_classification)."""
    import transformers as T

    cfg = tiny_hf_config(family, num_labels=num_labels)
    prefix = {
        "bert": "Bert",
        "roberta": "Roberta",
        "albert": "Albert",
        "distilbert": "DistilBert",
        "gpt2": "GPT2",
    }[family]
    cls = getattr(T, prefix + HEAD_CLASSES[head])
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    if head is not None:  # random, non-zero head weights so the comparison means something
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1 and float(p.abs().sum()) == 0.0:
                    torch.nn.init.normal_(p, std=0.02)
    return model


@pytest.fixture(scope="session")
def hf_tiny_dir(tmp_path_factory):
    """Factory: folder with a saved tiny HF model of (family, head)."""
    cache = {}

    def get(family: str, head: str | None = None):
        key = (family, head)
        if key not in cache:
            path = tmp_path_factory.mktemp(f"hf-{family}-{head}")
            make_hf_model(family, head).save_pretrained(path)
            cache[key] = path
        return cache[key]

    return get


def random_batch(family: str, batch: int = 3, length: int = 11, seed: int = 1):
    """Token ids with right padding of different lengths (and token types where they exist)."""
    g = torch.Generator().manual_seed(seed)
    pad = {"roberta": 1, "gpt2": 98}.get(family, 0)
    ids = torch.randint(3, 90, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        cut = length - 2 * row
        ids[row, cut:] = pad
        mask[row, cut:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if family in ("bert", "albert"):
        tt = torch.zeros_like(ids)
        tt[:, length // 2 :] = 1
        out["token_type_ids"] = tt * mask
    return out


@pytest.fixture
def load_benchmark():
    """A loader of a script under benchmarks/ as a module (``load_benchmark("slim")``), with
    benchmarks/ on sys.path while it imports (the scripts import report.py as a sibling)."""
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str):
        sys.path.insert(0, str(bench))
        try:
            spec = importlib.util.spec_from_file_location(
                f"gearshift_bench_{name}", bench / f"{name}.py"
            )
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(bench))
        return module

    return load
