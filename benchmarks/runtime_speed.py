"""gearshift's runtime against Hugging Face's own model: same checkpoint, same run.

Loads MiniLM-L6 (all-MiniLM-L6-v2) into gearshift's runtime and as ``transformers.AutoModel``,
builds batches of real SST-2 dev sentences padded to length 128, and times both at batch 1
and batch 32 interleaved round-robin (same threads). Checks that the outputs agree, writes
``benchmarks/results/runtime_speed.json`` and prints a Markdown table.

    .venv/bin/python benchmarks/runtime_speed.py [--threads N] [--repeats 30]

Target: gearshift / HF latency <= 1.10 at both batch sizes.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from gearshift.measure import (  # noqa: E402
    OperatingPoint,
    compare_latency,
    count_parameters,
    fixed_threads,
    flops_at_length,
    make_batch,
    markdown_table,
    write_results,
)
from gearshift.paths import glue_dir, resolve_model_name  # noqa: E402
from gearshift.runtime import load_pretrained, load_tokenizer  # noqa: E402

MODEL = "minilm-l6"
SEQ_LEN = 128
TARGET = 1.10
RESULTS = Path(__file__).resolve().parent / "results" / "runtime_speed.json"


def sst2_dev_sentences() -> list[str]:
    """The sentences of GLUE SST-2's dev set (the file the data README describes)."""
    root = glue_dir()
    if root is None:
        sys.exit("no GLUE data found: set GLUE_DIR or GEARSHIFT_DATA (see ../shared/data/README)")
    path = root / "SST-2" / "dev.tsv"
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t", quotechar=None)
        header = next(reader)
        col = header.index("sentence")
        return [row[col] for row in reader if row]


def retime(args: argparse.Namespace, tokenizer, texts: list[str], fns: dict) -> int:
    """Re-time the recorded rows (HF the reference) by the shared protocol; 0 on success."""
    from report import command_line  # benchmarks/ is on sys.path when run as a script

    from gearshift.measure.report import ResultsSink
    from gearshift.measure.retime import TimingProtocol, retime_rows

    sink = ResultsSink(args.out, "runtime_speed")
    by_method = {r["method"]: r for r in sink.rows}
    if set(by_method) != set(fns):
        print(f"no rows of {sorted(fns)} in {args.out}: run without --retime first")
        return 1
    protocol = TimingProtocol(
        threads=args.threads or 1, warmup=args.warmup, repeats=args.repeats, rounds=args.rounds
    )
    batches = {
        size: make_batch(tokenizer, texts, size, max_length=SEQ_LEN, pad_to=SEQ_LEN)
        for size in (1, 32)
    }
    command = command_line(__file__, None)
    with torch.inference_mode():
        timed = retime_rows(
            [by_method["hf"], by_method["gearshift-runtime"]],
            by_method["hf"],
            lambda r: fns[r["method"]],
            batches,
            command=command,
            protocol=protocol,
        )
    sink.add(timed)
    for r in timed:
        rec = r["extras"]["retime"]
        print(
            f"{r['method']}: b1 {rec['ratio_b1']:.3f} {rec['ratio_b1_spread']}, "
            f"b32 {rec['ratio_b32']:.3f} {rec['ratio_b32_spread']} of HF"
        )
    worst = max(timed[1]["latency_ratio_b1"], timed[1]["latency_ratio_b32"])
    verdict = "meets" if worst <= TARGET else "MISSES"
    print(f"gearshift/HF latency (re-timed): worst ratio {worst:.3f} {verdict} <= {TARGET:.2f}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: current)"
    )
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--retime",
        action="store_true",
        help="re-time the recorded rows by the shared timing protocol (gearshift.measure."
        "retime: a quiet machine, interleaved rounds, the spread kept); outputs and FLOPs stay",
    )
    parser.add_argument("--rounds", type=int, default=3, help="--retime: interleaved rounds")
    args = parser.parse_args()

    from transformers import AutoModel

    ours = load_pretrained(MODEL, head_kind=None).eval()
    hf = AutoModel.from_pretrained(resolve_model_name(MODEL)).eval()
    tokenizer = load_tokenizer(MODEL)
    texts = sst2_dev_sentences()

    def run_ours(batch):
        return ours(**batch).last_hidden_state

    def run_hf(batch):
        return hf(**batch).last_hidden_state

    if args.retime:
        sys.exit(retime(args, tokenizer, texts, {"gearshift-runtime": run_ours, "hf": run_hf}))
    rows = []
    summary = {}
    with fixed_threads(args.threads) as threads:
        for size in (1, 32):
            batch = make_batch(tokenizer, texts, size, max_length=SEQ_LEN, pad_to=SEQ_LEN)
            with torch.inference_mode():
                keep = batch["attention_mask"].bool()
                a, b = run_ours(batch), run_hf(batch)
                diff_real = float((a - b)[keep].abs().max())
                diff_all = float((a - b).abs().max())
            cmp = compare_latency(
                {"gearshift-runtime": run_ours, "hf": run_hf},
                batch,
                reference="hf",
                warmup=args.warmup,
                repeats=args.repeats,
            )
            summary[size] = (cmp, diff_real, diff_all)

    # FLOPs are counted on gearshift's runtime only (HF's fused attention hides its matmuls
    # from the counter); HF's parameter count includes BERT's pooler, which ours leaves out.
    flops = {"gearshift-runtime": float(flops_at_length(ours, SEQ_LEN)), "hf": None}
    params = {"gearshift-runtime": count_parameters(ours), "hf": count_parameters(hf)}
    for name in ("gearshift-runtime", "hf"):
        extras = {"threads": threads, "seq_len": SEQ_LEN, "texts": "SST-2 dev, padded to 128"}
        for size, (cmp, diff_real, diff_all) in summary.items():
            s = cmp.stats[name]
            extras[f"latency_ms_b{size}"] = round(s.median_ms, 3)
            extras[f"latency_p90_ms_b{size}"] = round(s.p90_ms, 3)
            extras[f"repeats_b{size}"] = s.repeats
            if name != "hf":
                extras[f"max_abs_diff_b{size}"] = diff_real
                extras[f"max_abs_diff_with_padding_b{size}"] = diff_all
        rows.append(
            OperatingPoint(
                task="sst2-dev-sentences",
                model="all-MiniLM-L6-v2",
                method=name,
                setting="base model, no head, fp32",
                metric="latency",
                flops_128=flops[name],
                params=params[name],
                latency_ratio_b1=summary[1][0].ratios[name],
                latency_ratio_b32=summary[32][0].ratios[name],
                extras=extras,
            )
        )
    write_results(args.out, rows, "runtime_speed")
    print(
        markdown_table(
            rows,
            [
                "method",
                "params",
                "flops_128",
                "latency_ms_b1",
                "latency_ratio_b1",
                "latency_ms_b32",
                "latency_ratio_b32",
                "max_abs_diff_b1",
                "max_abs_diff_b32",
            ],
        )
    )
    print(f"threads {threads}; results written to {args.out}")
    worst = max(
        summary[1][0].ratios["gearshift-runtime"], summary[32][0].ratios["gearshift-runtime"]
    )
    verdict = "meets" if worst <= TARGET else "MISSES"
    print(f"gearshift/HF latency: worst ratio {worst:.3f} {verdict} the target <= {TARGET:.2f}")


if __name__ == "__main__":
    main()
