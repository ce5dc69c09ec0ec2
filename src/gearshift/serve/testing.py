"""A tiny gear table to try the server on (tests, `benchmarks/serve.py --quick`): a small
random BERT classifier with MiniLM's tokenizer and a k=2 plugin; and uvicorn in a thread on
a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import torch

LABELS = ["negative", "positive"]


def make_tiny_gears(root: Path, pair: bool = False) -> Path:
    """Write a tiny BERT classifier (MiniLM's tokenizer), a k=2 plugin for it and a gear
    table with gears full / k2 (and a "slow" copy of full for the controller); returns the
    table's path."""
    import transformers as T

    from gearshift.methods.plugins.config import PluginConfig
    from gearshift.methods.plugins.model import Plugin, save_plugin
    from gearshift.paths import resolve_model_name
    from gearshift.runtime import load_pretrained, save_model
    from gearshift.serve.table import Gear, GearTable, ModelEntry, TaskInfo

    root = Path(root)
    tok = T.AutoTokenizer.from_pretrained(resolve_model_name("minilm-l6"))
    cfg = T.BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=160,
        num_labels=2,
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )
    torch.manual_seed(0)
    hf = T.BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # a decisive head, so labels do not sit on a tie
        hf.classifier.weight.normal_(0, 3.0)
        hf.bert.embeddings.word_embeddings.weight.normal_(0, 1.0)
    hf.save_pretrained(root / "hf")
    tok.save_pretrained(root / "hf")
    model = load_pretrained(str(root / "hf"))
    save_model(model, root / "model", tokenizer=tok)
    plugin = Plugin(PluginConfig(k=2), model)
    with torch.no_grad():
        for p in plugin.parameters():
            p.normal_(0, 0.3)
    save_plugin(plugin, root / "k2")
    table = GearTable(
        TaskInfo("sst2" if not pair else "mrpc", "classification", pair, LABELS, "accuracy"),
        {"base": ModelEntry(str(root / "model"), {"k2": str(root / "k2")})},
        [
            Gear("full", "base", {"plugins": None}, score=90.0, latency_ms={1: 2, 8: 6, 32: 20}),
            Gear("k2", "base", {"plugins": "k2"}, score=85.0, latency_ms={1: 1, 8: 3, 32: 9}),
        ],
    )
    path = root / "gears.json"
    table.save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """uvicorn serving ``app`` in a thread on 127.0.0.1:``port``; ``stop()`` shuts it down."""

    def __init__(self, app, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 30 s")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
