"""Where a plugin's CPU time goes: a profile of one batch-32 forward pass, split by part.

    python benchmarks/plugin_profile.py                        # SST-2, MRPC, RTE
    python benchmarks/plugin_profile.py --tasks sst2 --settings k4-ffn k4-ffn-cls

The FLOPs ratio of k4-ffn to the teacher is about 0.54, its batch-32 latency ratio about
0.64 (benchmarks/plugins.py): this shows why. For the teacher and each plugin setting it
profiles ``--rounds`` forward passes (torch.profiler, one thread) on a batch of 32 real dev
inputs with dynamic padding, and splits the time per pass into

- matmuls: the model's linear layers (the plugin's own small linears excluded),
- attention: scaled dot-product attention (scores, softmax, weighted values),
- merger / restorer: everything the plugin's two modules run, their linears included,
- other: layer norms, activations, residual adds, embeddings, copies.

The timings do not depend on the plugin's weights, so fresh plugins of the same shape are
profiled (nothing has to be trained first) on the pre-trained MiniLM-L6 with a task head.
Rows go to ``benchmarks/results/plugin_profile.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from report import COLUMNS as REPORT_COLUMNS  # benchmarks/ is on sys.path
from report import command_line
from torch.profiler import ProfilerActivity, profile, record_function

from gearshift.data import get_task
from gearshift.jobs import dev_texts, model_for_task
from gearshift.measure import (
    OperatingPoint,
    ResultsSink,
    fixed_threads,
    make_batch,
    markdown_table,
)
from gearshift.methods.plugins import Plugin, PluginConfig, TokenMerger, TokenRestorer

RESULTS = Path(__file__).resolve().parent / "results" / "plugin_profile.json"
PARTS = ["matmuls", "attention", "merger", "restorer", "other"]
COLUMNS = REPORT_COLUMNS["plugin_profile"]
MATMULS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear"}
SETTINGS = {
    "k4-ffn": PluginConfig(k=4, placement="ffn"),
    "k4-ffn-cls": PluginConfig(k=4, placement="ffn", keep_first_token=True),
    "k2-layer": PluginConfig(k=2, placement="layer"),
    "k4-layer": PluginConfig(k=4, placement="layer"),
}


class _Labelled:
    """Run the plugin modules' forward under a profiler label (undone on exit)."""

    def __enter__(self):
        self.saved = {}
        for cls, label in ((TokenMerger, "merger"), (TokenRestorer, "restorer")):
            self.saved[cls] = cls.forward

            def forward(module, *args, _f=cls.forward, _label=label, **kwargs):
                with record_function(f"plugin.{_label}"):
                    return _f(module, *args, **kwargs)

            cls.forward = forward
        return self

    def __exit__(self, *exc):
        for cls, forward in self.saved.items():
            cls.forward = forward


def split_time(events, rounds: int) -> dict[str, float]:
    """Milliseconds per pass in each part, from the profiler's events (self times)."""
    ms = dict.fromkeys(PARTS, 0.0)
    for e in events:
        if e.name.startswith("plugin."):
            continue  # the label's own self time is Python overhead, counted below
        part, parent = None, e.cpu_parent
        while parent is not None and part is None:
            if parent.name.startswith("plugin."):
                part = parent.name.removeprefix("plugin.")
            elif "scaled_dot_product" in parent.name:
                part = "attention"
            parent = parent.cpu_parent
        if part is None:
            if "scaled_dot_product" in e.name:
                part = "attention"
            elif e.name in MATMULS:
                part = "matmuls"
            else:
                part = "other"
        ms[part] += e.self_cpu_time_total / 1000.0
    return {k: v / rounds for k, v in ms.items()}


def profile_setting(model, batch, plan, rounds: int) -> dict[str, float]:
    def run():
        with torch.inference_mode():
            model(**batch, plan=plan)

    for _ in range(3):
        run()
    with _Labelled(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(rounds):
            run()
    parts = split_time(prof.events(), rounds)
    return {"total_ms": sum(parts.values()), **{f"{k}_ms": v for k, v in parts.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mrpc", "rte"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10, help="profiled passes per setting")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    command = command_line(__file__, argv)
    sink = ResultsSink(args.output, "plugin_profile")
    with fixed_threads(args.threads):
        for name in args.tasks:
            task = get_task(name)
            model, tok = model_for_task("minilm-l6", task)
            model.eval()
            batch = make_batch(tok, dev_texts(task, args.batch_size), args.batch_size)
            plans = {"full": None}
            plans.update({s: Plugin(SETTINGS[s], model).eval().plan() for s in args.settings})
            rows = []
            for setting, plan in plans.items():
                extras = profile_setting(model, batch, plan, args.rounds)
                extras["seq_len"] = int(batch["input_ids"].shape[1])
                extras["batch_size"] = args.batch_size
                rows.append(
                    OperatingPoint(
                        task=task.name,
                        model="minilm-l6",
                        method="teacher" if plan is None else "plugin",
                        setting=setting,
                        metric="ms per batch",
                        score=extras["total_ms"],
                        command=command,
                        extras=extras,
                    ).to_dict()
                )
            sink.add(rows)
            print(markdown_table(rows, COLUMNS), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
