"""One call that measures a model every way the protocol asks, as a JSON-ready dict."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

from gearshift.measure.flops import analytic_flops, flops_at_length, flops_per_example
from gearshift.measure.latency import fixed_threads, forward_fn, make_batch, measure_latency
from gearshift.measure.memory import peak_memory
from gearshift.measure.params import count_parameters, parameter_breakdown, parameter_bytes
from gearshift.measure.report import format_flops, machine_description
from gearshift.runtime.plan import ForwardPlan


def _single_batches(tokenizer: Any, texts: Sequence[str | tuple[str, str]], max_length: int):
    """Yield one batch of size 1 per text, each at its own length (no padding)."""
    for text in texts:
        yield make_batch(tokenizer, [text], 1, max_length=max_length)


def profile_model(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str | tuple[str, str]],
    batch_sizes: Sequence[int] = (1, 32),
    seq_len: int = 128,
    threads: int | None = None,
    plan: ForwardPlan | None = None,
    warmup: int = 5,
    repeats: int = 30,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure ``model`` on real ``texts``; return a JSON-serialisable dict.

    Keys: ``model`` (family, layers, hidden size, source), ``params`` (total, trainable,
    bytes, breakdown), ``flops`` (per example over ``texts`` at batch 1, each text at its own
    length truncated to ``seq_len``; per example at exactly ``seq_len`` tokens; the analytic
    count at ``seq_len`` for the unmodified model; the mean text length), ``latency`` and
    ``memory`` (per batch size, batches of the texts with dynamic padding, truncated to
    ``seq_len``), ``threads`` and ``machine``. ``progress`` shows a tqdm bar over the steps.
    """
    if not texts:
        raise ValueError("profile_model needs at least one text")
    config = getattr(model, "config", None)
    model.eval()
    out: dict[str, Any] = {}
    if config is not None:
        out["model"] = {
            "family": config.family,
            "num_layers": config.num_layers,
            "hidden_size": config.hidden_size,
            "blocks": [[b.num_heads, b.intermediate_size] for b in config.blocks],
            "layer_to_block": list(config.layer_to_block),
            "source": config.source,
        }
    out["params"] = {
        "total": count_parameters(model),
        "trainable": count_parameters(model, trainable_only=True),
        "bytes": parameter_bytes(model),
        "breakdown": parameter_breakdown(model),
    }
    from tqdm.auto import tqdm

    bar = tqdm(total=2 + 2 * len(batch_sizes), desc="profile", unit="step", disable=not progress)
    bar.set_postfix_str("FLOPs")
    lengths = [int(b["input_ids"].shape[1]) for b in _single_batches(tokenizer, texts, seq_len)]
    flops: dict[str, Any] = {
        "per_example_dynamic": flops_per_example(
            model, _single_batches(tokenizer, texts, seq_len), plan
        ),
        "per_example_at_length": flops_at_length(model, seq_len, plan),
        "seq_len": seq_len,
        "num_texts": len(texts),
        "mean_tokens": sum(lengths) / len(lengths),
    }
    if config is not None:
        flops["analytic_at_length"] = analytic_flops(config, seq_len)
    out["flops"] = flops
    bar.update(2)

    fn = forward_fn(model, plan)
    latency: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    with fixed_threads(threads) as used:
        for size in batch_sizes:
            batch = make_batch(tokenizer, texts, size, max_length=seq_len)
            bar.set_postfix_str(f"latency b{size}")
            stats = measure_latency(fn, batch, warmup=warmup, repeats=repeats)
            latency[f"b{size}"] = {
                **stats.to_dict(),
                "padded_length": int(batch["input_ids"].shape[1]),
            }
            bar.update(1)
            bar.set_postfix_str(f"memory b{size}")
            with quiet_profiler_lines():
                memory[f"b{size}"] = peak_memory(fn, batch, model=model).to_dict()
            bar.update(1)
    bar.close()
    out["latency"] = latency
    out["memory"] = memory
    out["threads"] = used
    out["machine"] = machine_description()
    return out


@contextmanager
def quiet_profiler_lines() -> Iterator[None]:
    """Run the block with the process's stderr (file descriptor 2) captured, then pass on
    every line except torch's native profiler notices (``USDT:... profiler_start``), which
    the CPU memory measurement would otherwise print into the user's output."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr replaced (e.g. pytest capture)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            # the notices may sit inside other output (a progress bar redrawn with \r)
            kept = _PROFILER_NOTICE.sub("", text)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


_PROFILER_NOTICE = re.compile(r"USDT:[^\n\r]*?Profiler[^\n\r]*?profiler_(?:start|stop)\n?")


def profile_markdown(d: dict[str, Any]) -> str:
    """Return a short Markdown report of a :func:`profile_model` result."""
    lines = [
        f"# Model profile: {d['model_name']}" if d.get("model_name") else "# Model profile",
        "",
    ]
    if "model" in d:
        m = d["model"]
        lines.append(
            f"- model: {m['family']}, {m['num_layers']} layers, hidden {m['hidden_size']}"
            + (f" (built from {m['source']})" if m.get("source") else "")
        )
    p = d["params"]
    bd = p["breakdown"]
    lines.append(
        f"- parameters: {p['total'] / 1e6:.2f}M ({p['bytes'] / 2**20:.1f} MiB); "
        f"embeddings {bd['embeddings'] / 1e6:.2f}M, blocks {bd['blocks'] / 1e6:.2f}M, "
        f"heads {bd['heads'] / 1e6:.2f}M, other {bd['other'] / 1e6:.2f}M"
    )
    f = d["flops"]
    lines.append(
        f"- FLOPs per example: {format_flops(f['per_example_dynamic'])} on {f['num_texts']} texts "
        f"(mean {f['mean_tokens']:.1f} tokens), {format_flops(f['per_example_at_length'])} "
        f"at length {f['seq_len']}"
        + (
            f" (analytic count of the config {format_flops(f['analytic_at_length'])})"
            if "analytic_at_length" in f
            else ""
        )
    )
    # machine_description names the thread count in force when it ran; say the timings' once
    machine = ", ".join(p for p in d["machine"].split(", ") if not p.startswith("torch threads"))
    machine += f"; torch threads {d['threads']} (used for the timings)"
    lines.append(f"- machine: {machine}")
    lines += [
        "",
        "| batch | padded length | median ms | p90 ms | ms per example | peak memory | activations |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, lat in d["latency"].items():
        mem = d["memory"][key]
        lines.append(
            f"| {lat['batch_size']} | {lat['padded_length']} | {lat['median_ms']:.2f} | "
            f"{lat['p90_ms']:.2f} | {lat['median_ms'] / lat['batch_size']:.2f} | "
            f"{mem['peak_bytes'] / 2**20:.1f} MiB | {mem['activations_bytes'] / 2**20:.1f} MiB |"
        )
    return "\n".join(lines) + "\n"
