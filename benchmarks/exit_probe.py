"""What an exit can read at each layer: linear probes on the first token's state and on the
mean of the real tokens' states, per layer, of each MiniLM-L6 teacher (frozen).

    python benchmarks/exit_probe.py                     # the five GLUE tasks
    python benchmarks/exit_probe.py --tasks sst2 --train-limit 3000

An exit is a small head on one layer's output; the probe is the best such head a linear
model finds (scikit-learn's logistic regression, or ridge regression for STS-B) trained on
``--train-limit`` training examples, scored with the task's metric on the full dev set.
all-MiniLM-L6-v2 was pre-trained with mean pooling, so its first token need not carry the
sentence in the shallow layers; this measures it, and it decides the exits' ``pool``
setting (docs/slim.md). Rows go to ``benchmarks/results/exit_probe.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import torch
from report import command_line  # benchmarks/ is on sys.path
from sklearn.linear_model import LogisticRegression, Ridge

from gearshift.data import compute_metrics, get_task
from gearshift.jobs import TaskData, model_for_task, teacher_dir
from gearshift.measure import ResultsSink, fixed_threads, machine_description, markdown_table
from gearshift.methods.slim.model import mean_of_real_tokens

RESULTS = Path(__file__).resolve().parent / "results" / "exit_probe.json"
TASKS = ["sst2", "mrpc", "rte", "stsb", "cola"]
COLUMNS = ["task", "method", "setting", "score", "reference_score"]


def layer_features(model, data: TaskData, batch_size: int = 64):
    """Per layer: (first-token states, mean-pooled states); and the labels."""
    layers = model.config.num_layers
    first: list[list[torch.Tensor]] = [[] for _ in range(layers)]
    mean: list[list[torch.Tensor]] = [[] for _ in range(layers)]
    labels = []
    for i in range(0, len(data.features), batch_size):
        b = data.collator(data.features[i : i + batch_size])
        with torch.no_grad():
            out = model(
                b["input_ids"],
                b["attention_mask"],
                b.get("token_type_ids"),
                output_hidden_states=True,
            )
        keep = b["attention_mask"].bool()
        for layer, h in enumerate(out.hidden_states[1:]):
            first[layer].append(h[:, 0])
            mean[layer].append(mean_of_real_tokens(h, keep))
        labels.append(b["labels"])
    stack = lambda xs: [torch.cat(x).numpy() for x in xs]  # noqa: E731
    return stack(first), stack(mean), torch.cat(labels).numpy()


def probe(task, x_train, y_train, x_dev, y_dev) -> float:
    if task.kind == "regression":
        pred = Ridge(alpha=1.0).fit(x_train, y_train).predict(x_dev)
    else:
        pred = LogisticRegression(max_iter=3000).fit(x_train, y_train).predict(x_dev)
    return compute_metrics(task, np.asarray(pred), y_dev)[task.main_metric]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--train-limit", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    command = command_line(__file__, argv)
    sink = ResultsSink(args.output, "exit_probe")
    with fixed_threads(args.threads):
        machine = machine_description()
        date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        for name in args.tasks:
            task = get_task(name)
            folder = teacher_dir(task.name) / "best"
            if not (folder / "gearshift.json").is_file():
                print(f"[probe] skipping {task.name}: no finished teacher in {folder}")
                continue
            model, tok = model_for_task(str(folder), task)
            model.eval()
            train = TaskData.load(task, tok, "train", limit=args.train_limit)
            dev = TaskData.load(task, tok, "dev")
            tr_first, tr_mean, tr_y = layer_features(model, train)
            dv_first, dv_mean, dv_y = layer_features(model, dev)
            rows = []
            for layer in range(model.config.num_layers):
                scores = {
                    "first": probe(task, tr_first[layer], tr_y, dv_first[layer], dv_y),
                    "mean": probe(task, tr_mean[layer], tr_y, dv_mean[layer], dv_y),
                }
                for pool, score in scores.items():
                    rows.append(
                        {
                            "task": task.name,
                            "model": "minilm-l6",
                            "method": f"probe-{pool}",
                            "setting": f"layer {layer + 1}",
                            "metric": task.main_metric,
                            "score": score,
                            "reference_score": scores["first"] if pool == "mean" else None,
                            "command": command,
                            "date": date,
                            "machine": machine,
                            "extras": {
                                "layer": layer + 1,
                                "pool": pool,
                                "train_examples": len(train.features),
                                "teacher": str(folder),
                            },
                        }
                    )
                print(
                    f"[probe] {task.name} layer {layer + 1}: first token "
                    f"{scores['first']:.2f}, mean {scores['mean']:.2f}",
                    flush=True,
                )
            sink.add(rows)
            print(markdown_table(rows, COLUMNS), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
