"""Stacks of methods against each single method, on one teacher per task, in one run.

    python benchmarks/compose.py --tasks mrpc stsb sst2     # about 30-60 min per task, 2 cores
    python benchmarks/compose.py --tasks mrpc --quick        # smoke run (a few minutes)
    python benchmarks/compose.py --tasks mrpc --retime       # re-time the saved artifacts only
    python benchmarks/compose.py --tasks mrpc --build-only   # build the stacks, write no rows

For each task with a finished MiniLM-L6 teacher (benchmarks/teachers.py builds them), it
builds (cached under ``runs/compose/<task>/``, so a re-run resumes):

- single methods: torch int8 of the teacher (``int8``); SVD-LLM at ratio 2 without
  fine-tuning (``factorize``); a k=4 "ffn" plugin trained on the frozen teacher
  (``plugins``); exit heads trained on the frozen teacher, DeeBERT-style (``exits``, at
  several thresholds);
- stacks (``method: "stack"``, ``setting`` names the parts): svdllm:2 + int8;
  svdllm:2 + plugin (trained on the factorized model); svdllm:2 + plugin + exits; int8 +
  plugin; svdllm:2 + int8 + exits; plugin + exits.

Every point is scored on the full dev set (the task's metric), its FLOPs per example are the
closed-form count of what runs for each dev example (its own length, and with exits its own
exit step; gearshift.compose.flops, checked against counted FLOPs by the tests), its size on
disk is the bytes of its folder(s), and its latency at batch 1 and 32 comes from the shared
timing protocol (gearshift.measure.retime: fixed threads, warm-up, every point interleaved
with the teacher in one process, several rounds; median ratio and its spread over rounds),
which refuses a busy machine unless ``--allow-load`` records the load. The plugin and exit
heads are trained with seed 42 (``seed`` on each row: 1 seed).

Rows go to benchmarks/results/compose.json; plots to benchmarks/results/compose_<task>.png.
The report (benchmarks/report.py) lists which stacks dominate every single method at their
budget.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import command_line  # noqa: E402  (benchmarks/ is on sys.path)

from gearshift.compose import Stack, load_stack, save_stack  # noqa: E402
from gearshift.compose.flops import stack_flops  # noqa: E402
from gearshift.data import compute_metrics, get_task  # noqa: E402
from gearshift.data.taskdata import TaskData, dev_texts  # noqa: E402
from gearshift.measure import ResultsSink, forward_fn, make_batch, plot_tradeoff  # noqa: E402
from gearshift.measure.retime import QUICK, TimingProtocol, retime  # noqa: E402
from gearshift.methods.plugins import Plugin, PluginConfig  # noqa: E402
from gearshift.methods.plugins.model import Plugins  # noqa: E402
from gearshift.methods.slim.criteria import parse_criterion  # noqa: E402
from gearshift.methods.slim.model import ExitConfig, Exits, MultiExitModel  # noqa: E402
from gearshift.runtime import load_model, load_pretrained, load_tokenizer, save_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "compose.json"
SEED = 42
ENTROPY = (0.05, 0.2, 0.4)  # exit thresholds (classification: entropy in nats)
PATIENCE = ("patience:1:0.25", "patience:2:0.25", "patience:1:0.5")  # regression


# ---------------------------------------------------------------------- artifacts
def folder_bytes(*folders: Path) -> int:
    """Bytes of the weight files of ``folders`` (what a user ships)."""
    total = 0
    for folder in folders:
        total += sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors"))
    return total


def train_plugin_on(base, task, tok, out: Path, steps: int, quick: bool, seed: int = SEED) -> Path:
    """A k=4 "ffn" plugin trained on frozen ``base`` (stage C: its own outputs as targets)."""
    from gearshift.methods.plugins.train import train_plugin
    from gearshift.train import TrainConfig

    if (out / "plugin" / "gearshift.json").is_file():
        return out / "plugin"
    torch.manual_seed(seed)
    train = TaskData.load(task, tok, "train", limit=steps * 16)
    plugin = Plugin(PluginConfig(k=4, placement="ffn"), base)
    cfg = TrainConfig(
        output_dir=str(out),
        max_steps=steps,
        batch_size=16,
        learning_rate=1e-3,
        warmup_ratio=0.06,
        save_every=0,
        log_every=10,
        seed=seed,
        progress=not quick,
    )
    res = train_plugin(base, plugin, train.features, train.collator, cfg, resume=True)
    return res.plugin_dir


def train_exits_on(base, task, tok, out: Path, steps: int, quick: bool, seed: int = SEED) -> Path:
    """Exit heads trained on frozen ``base`` from its final logits (DeeBERT's second stage)."""
    from gearshift.methods.slim.train import SlimConfig, distil_stage

    if (out / "exits" / "gearshift.json").is_file():
        return out / "exits"
    torch.manual_seed(seed)
    train = TaskData.load(task, tok, "train", limit=steps * 32)
    # mean pooling: all-MiniLM-L6-v2 was pre-trained with mean pooling, so its shallow
    # layers' first token carries little (docs/slim.md)
    student = MultiExitModel(copy.deepcopy(base), ExitConfig(pool="mean"))
    config = SlimConfig(heads=1, ffn=1, ta_steps=steps, seed=seed)
    model_dir = distil_stage(
        student,
        base,
        train.features,
        train.collator,
        config,
        out / "train",
        steps,
        train_backbone=False,
        progress=not quick,
    )
    from gearshift.methods.slim.model import load_multi_exit

    trained = load_multi_exit(model_dir)
    trained.providers["exits"].save_pretrained(out / "exits", base.config)
    return out / "exits"


def seeded(name: str, seed: int) -> str:
    """The folder name of a trained artifact of ``seed`` (seed 42's keep their plain names)."""
    return name if seed == SEED else f"{name}-s{seed}"


def build_artifacts(
    task, teacher_dir: Path, root: Path, quick: bool, train_steps: int = 150, seed: int = SEED
) -> dict[str, Path]:
    """Every model, plugin and exits folder the points need (cached in ``root``); the
    trained ones (plugins, exit heads) of ``seed``."""
    from gearshift.methods.factorize import FactorizeConfig, calibration_batches, compress
    from gearshift.runtime import quantize_int8

    tok = load_tokenizer(str(teacher_dir))
    teacher = load_pretrained(str(teacher_dir)).eval()
    steps = 20 if quick else train_steps
    out: dict[str, Path] = {"teacher": teacher_dir}

    def edited(name: str, make: Callable[[], Any]) -> Path:
        folder = root / name
        if not (folder / "gearshift.json").is_file():
            save_model(make(), folder, tokenizer=tok)
        out[name] = folder
        return folder

    edited("int8", lambda: quantize_int8(copy.deepcopy(teacher)))

    def svdllm():
        cal = calibration_batches(tok, "task", task, 64 if quick else 256)
        model, _ = compress(
            copy.deepcopy(teacher), FactorizeConfig(method="svdllm", ratio=2.0, progress=False), cal
        )
        return model

    edited("svdllm2", svdllm)

    def slim75():
        """Slim's width edit alone: keep the 3/4 most important heads and FFN neurons of
        every layer by first-order Taylor scores on 8 training batches, no recovery
        distillation (COST-EFF's pipeline would recover; that takes hours here)."""
        from gearshift.methods.slim.prune import prune, select, taylor_importance

        train = TaskData.load(task, tok, "train", limit=8 * 32)
        batches = list(train.loader(32))
        model = copy.deepcopy(teacher)
        imp = taylor_importance(model, batches, lambda m, b: m(**b).loss)
        cfg = model.config
        heads = select(
            imp.heads, [cfg.layer_shape(i).num_heads * 3 // 4 for i in range(cfg.num_layers)]
        )
        neurons = select(
            imp.neurons,
            [cfg.layer_shape(i).intermediate_size * 3 // 4 for i in range(cfg.num_layers)],
        )
        return prune(model, heads, neurons)

    edited("slim75", slim75)
    edited("slim75-int8", lambda: quantize_int8(load_model(root / "slim75")))
    edited("svdllm2-int8", lambda: quantize_int8(load_model(root / "svdllm2")))
    t0 = time.perf_counter()
    svd = load_model(root / "svdllm2")
    for name, train, base in (
        ("plugin@teacher", train_plugin_on, teacher),
        ("plugin@svdllm2", train_plugin_on, svd),
        ("exits@teacher", train_exits_on, teacher),
        ("exits@svdllm2", train_exits_on, svd),
    ):
        folder = root / seeded(name.replace("@", "-"), seed)
        out[name] = train(base, task, tok, folder, steps, quick, seed)
    print(f"[compose] {task.name}: artifacts ready ({time.perf_counter() - t0:.0f} s of training)")
    return out


# ---------------------------------------------------------------------- points
class Point(NamedTuple):
    """One operating point: a stack folder at a setting."""

    method: str  # teacher | int8 | factorize | plugins | exits | stack
    setting: str  # the parts, e.g. "svdllm:2 + plugin k4-ffn + exits entropy:0.2"
    stack_dir: Path
    run: dict[str, Any] = {}  # the stack setting (never mutated)


def make_stacks(art: dict[str, Path], root: Path, task, tok, seed: int = SEED) -> dict[str, Path]:
    """Stack folders (each one artifact) for every combination measured; those with trained
    parts of a seed other than 42 under ``stacks-s<seed>``."""
    specs = {
        # name: (base, plugin, exits)
        "teacher": ("teacher", None, None),
        "int8": ("int8", None, None),
        "svdllm2": ("svdllm2", None, None),
        "teacher+plugin": ("teacher", "plugin@teacher", None),
        "teacher+exits": ("teacher", None, "exits@teacher"),
        "svdllm2+int8": ("svdllm2-int8", None, None),
        "svdllm2+plugin": ("svdllm2", "plugin@svdllm2", None),
        "svdllm2+plugin+exits": ("svdllm2", "plugin@svdllm2", "exits@svdllm2"),
        "int8+plugin": ("int8", "plugin@teacher", None),
        "svdllm2+int8+exits": ("svdllm2-int8", None, "exits@svdllm2"),
        "teacher+plugin+exits": ("teacher", "plugin@teacher", "exits@teacher"),
        "slim75": ("slim75", None, None),
        "slim75+int8": ("slim75-int8", None, None),
        "slim75+plugin+int8": ("slim75-int8", "plugin@teacher", None),
    }
    out = {}
    for name, (base_name, plugin, exits) in specs.items():
        # nothing trained: one folder for every seed
        folder = root / (seeded("stacks", seed) if plugin or exits else "stacks") / name
        out[name] = folder
        if (folder / "gearshift.json").is_file():
            continue
        base = load_model(art[base_name])
        stack = Stack(base)
        if plugin:
            stack.attach(Plugins({"k4-ffn": Plugin.from_pretrained(art[plugin], base)}))
        if exits:
            provider = Exits.from_pretrained(art[exits], base)
            provider.choices = [parse_criterion(c) for c in criteria_for(task)]
            stack.attach(provider)
        save_stack(stack, folder, tokenizer=tok, base_meta={"task": {"name": task.name}})
    return out


SHARED_STEPS = ("6", "3", "2")  # the step counts measured on a shared model (Euler)


def shared_stacks(shared_dir: Path, root: Path, task, tok, steps: int, quick: bool) -> dict:
    """A parameter-shared model of the task (``--shared``), its exit heads (trained on the
    frozen shared model in its own 6-step loop, like the teacher's) and two stack folders:
    steps alone, and steps + exits (an exit after each step; at N = 3 the heads of the
    layers the steps land on)."""
    from gearshift.methods.steps.model import Steps

    base = load_model(shared_dir).eval()
    if not base.config.is_shared:
        raise SystemExit(f"--shared {shared_dir}: the model is not parameter-shared")
    exits_dir = train_exits_on(base, task, tok, root / "exits-shared", steps, quick)
    out = {}
    for name, with_exits in (("shared+steps", False), ("shared+steps+exits", True)):
        folder = root / "stacks" / name
        out[name] = folder
        if (folder / "gearshift.json").is_file():
            continue
        stack = Stack(base)
        stack.attach(Steps(list(SHARED_STEPS)), "steps")
        if with_exits:
            provider = Exits.from_pretrained(exits_dir, base)
            provider.choices = [parse_criterion(c) for c in criteria_for(task)]
            stack.attach(provider)
        save_stack(stack, folder, tokenizer=tok, base_meta={"task": {"name": task.name}})
    return out


def shared_points(task, stacks: dict[str, Path], label: str) -> list[Point]:
    """Steps alone at N = 6, 3, 2, and steps + exits at N = 6 and 3 for every criterion."""
    pts = [
        Point("steps", f"{label}, N={n}", stacks["shared+steps"], {"steps": n})
        for n in SHARED_STEPS
    ]
    for n in ("6", "3"):
        for c in criteria_for(task):
            pts.append(
                Point(
                    "stack",
                    f"{label}, N={n} + exits {c}",
                    stacks["shared+steps+exits"],
                    {"steps": n, "exits": c},
                )
            )
    return pts


def trained(p: Point) -> bool:
    """Whether the point has trained parts (a plugin, exit heads, a shared model), whose
    score moves with the seed."""
    return p.method == "steps" or "plugin" in p.setting or "exits" in p.setting


def criteria_for(task) -> list[str]:
    """The exit criteria measured: entropy thresholds, or patience for regression."""
    return list(PATIENCE) if task.kind == "regression" else [f"entropy:{t:g}" for t in ENTROPY]


def points_for(task, stacks: dict[str, Path]) -> list[Point]:
    crits = criteria_for(task)
    pts = [
        Point("teacher", "full", stacks["teacher"]),
        Point("int8", "torch int8 (dynamic, per-channel)", stacks["int8"]),
        Point("factorize", "svdllm:2 (no fine-tuning)", stacks["svdllm2"]),
        Point("plugins", "plugin k4-ffn", stacks["teacher+plugin"], {"plugins": "k4-ffn"}),
        Point("stack", "svdllm:2 + int8", stacks["svdllm2+int8"]),
        Point("stack", "svdllm:2 + plugin k4-ffn", stacks["svdllm2+plugin"], {"plugins": "k4-ffn"}),
        Point("stack", "int8 + plugin k4-ffn", stacks["int8+plugin"], {"plugins": "k4-ffn"}),
        Point("slim", "slim widths 3/4 (Taylor, no recovery)", stacks["slim75"]),
        Point("stack", "slim widths 3/4 + int8", stacks["slim75+int8"]),
        Point(
            "stack",
            "slim widths 3/4 + plugin k4-ffn (trained on the teacher) + int8",
            stacks["slim75+plugin+int8"],
            {"plugins": "k4-ffn"},
        ),
    ]
    for c in crits:
        pts.append(Point("exits", f"exits {c}", stacks["teacher+exits"], {"exits": c}))
        pts.append(
            Point(
                "stack",
                f"svdllm:2 + plugin k4-ffn + exits {c}",
                stacks["svdllm2+plugin+exits"],
                {"plugins": "k4-ffn", "exits": c},
            )
        )
        pts.append(
            Point(
                "stack",
                f"svdllm:2 + int8 + exits {c}",
                stacks["svdllm2+int8+exits"],
                {"exits": c},
            )
        )
        pts.append(
            Point(
                "stack",
                f"plugin k4-ffn + exits {c}",
                stacks["teacher+plugin+exits"],
                {"plugins": "k4-ffn", "exits": c},
            )
        )
    return pts


@torch.inference_mode()
def score_point(stack: Stack, setting: dict, dev: TaskData) -> tuple[dict, float]:
    """(metrics, mean FLOPs per example) of ``stack`` at ``setting`` on ``dev``: each
    example charged for its own length and (with exits) the step it left after."""
    preds, refs, flops = [], [], []
    cache: dict[tuple, int] = {}
    exits_on = setting.get("exits") is not None
    for batch in dev.loader(64):
        labels = batch.pop("labels")
        out = stack(**batch, setting=setting)
        logits = out.logits
        if dev.task.kind == "classification":
            preds += logits.argmax(-1).tolist()
            refs += labels.tolist()
        else:
            preds += logits.float().reshape(-1).tolist()
            refs += labels.float().reshape(-1).tolist()
        lengths = batch["attention_mask"].sum(1).tolist()
        steps = out.exit_step.tolist() if out.exit_step is not None else [None] * len(lengths)
        for n, e in zip(lengths, steps):
            key = (int(n), e if exits_on else None)
            if key not in cache:
                cache[key] = stack_flops(stack, int(n), setting, exit_after=key[1])
            flops.append(cache[key])
    metrics = compute_metrics(dev.task, preds, refs)
    return metrics, sum(flops) / len(flops)


# ---------------------------------------------------------------------- the verdict
SINGLE_METHODS = ("int8", "factorize", "slim", "plugins", "exits", "steps")
COST_AXES = {
    "flops_dynamic": "FLOPs per example",
    "latency_ratio_b1": "latency ratio, batch 1",
    "latency_ratio_b32": "latency ratio, batch 32",
    "size_on_disk": "size on disk",
}


def cost_of(row: dict, axis: str) -> float | None:
    return row["extras"].get("size_on_disk") if axis == "size_on_disk" else row.get(axis)


def dominance(rows: list[dict], axis: str) -> list[dict]:
    """For each stack row of one task: the best single-method point whose ``axis`` cost is
    at most the stack's (its budget), and whether the stack scores above it. A stack that
    no single method can afford at its budget is "alone" (it dominates trivially).
    Returns one dict per stack: setting, cost, score, best single (setting, score) or None,
    margin (stack score - best single score), verdict ("dominates" | "alone" | "no")."""
    singles = [r for r in rows if r["method"] in SINGLE_METHODS and cost_of(r, axis) is not None]
    out = []
    for s in rows:
        if s["method"] != "stack" or cost_of(s, axis) is None:
            continue
        budget = cost_of(s, axis)
        affordable = [r for r in singles if cost_of(r, axis) <= budget]
        best = max(affordable, key=lambda r: r["score"], default=None)
        if best is None:
            verdict, margin = "alone", None
        else:
            margin = s["score"] - best["score"]
            verdict = "dominates" if margin > 0 else "no"
        out.append(
            {
                "setting": s["setting"],
                "cost": budget,
                "score": s["score"],
                "best_single": None if best is None else (best["setting"], best["score"]),
                "margin": margin,
                "verdict": verdict,
            }
        )
    return out


def _ratio(row: dict, size: int) -> str:
    r = row.get(f"latency_ratio_b{size}")
    if r is None:
        return "not timed"
    lo, hi = (row["extras"].get("latency_spread") or {}).get(f"b{size}", (None, None))
    return f"{r:.2f}" + (f" ({lo:.2f}-{hi:.2f})" if lo is not None else "")


def over_seeds(rows: list[dict]) -> list[dict]:
    """One row per (task, method, setting): the timed run's row (seed 42, or no seed) with
    ``score`` the mean over every seed recorded and ``extras["seed_scores"]`` the per-seed scores
    (a seed study's rows are untimed: the latency stays the timed row's)."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"], r["setting"]), []).append(r)
    out = []
    for rs in groups.values():
        timed = next((r for r in rs if r.get("seed") in (None, SEED)), rs[0])
        if len(rs) == 1:
            out.append(timed)
            continue
        scores = {r.get("seed"): r["score"] for r in rs}
        row = dict(timed, score=statistics.mean(scores.values()))
        row["extras"] = dict(
            timed["extras"], seed_scores=scores, score_std=statistics.stdev(scores.values())
        )
        out.append(row)
    return out


def _score_cell(r: dict) -> str:
    seeds = r["extras"].get("seed_scores")
    if not seeds:
        return f"{r['score']:.2f}"
    return f"{r['score']:.2f} ± {r['extras']['score_std']:.2f} ({len(seeds)} seeds)"


def _n_seeds(row: dict) -> str:
    n = len(row["extras"].get("seed_scores") or {})
    return f"{n} seeds" if n > 1 else "1 seed"


def _seed_note(d: dict, by_setting: dict) -> str:
    """How many seeds stand behind a stack's margin over its single, and whether the margin
    clears the seeds' spread (the larger of the two standard deviations)."""
    stack = by_setting.get(d["setting"], {})
    single = by_setting.get(d["best_single"][0], {}) if d.get("best_single") else {}
    if not stack.get("extras", {}).get("seed_scores"):
        return "1 seed"
    sd = max(stack["extras"].get("score_std", 0.0), single.get("extras", {}).get("score_std", 0.0))
    clear = "clears" if abs(d["margin"]) > sd else "within"
    return f"{_n_seeds(stack)}, {clear} the seed spread (std {sd:.2f})"


def markdown(rows: list[dict], floors: dict | None = None, signal=None) -> str:
    """The BENCHMARKS.md section: one table per task, then the dominance verdicts. Rows
    within noise of the task's constant prediction (``signal(row)``; default
    report.has_signal under ``floors``) show "no signal" and take no part in a verdict."""
    from report import NO_SIGNAL, has_signal

    floors = floors or {}
    if signal is None:

        def signal(r: dict) -> bool:
            return has_signal(r, floors, r.get("reference_score"))

    out = [
        "Stacks of methods next to each single method, on one teacher per task, every point "
        "of a task in one run (`python benchmarks/compose.py`). Score: the task's metric on "
        "the full dev set; FLOPs: the closed form of what runs per dev example, as a ratio "
        "to the teacher's; latency: ratio to the teacher at batch 1 and 32, median over "
        "rounds of the shared timing protocol (range over rounds in brackets); size: the "
        "weight files. Plugins and exit heads were trained with seed 42; where a seed study "
        "trained them again (`--seed 43`, `--seed 44`), the score is the mean ± std over "
        "seeds (latency stays seed 42's) and each verdict says how many seeds stand behind "
        "it and whether its margin clears the seeds' spread; elsewhere a difference is 1 "
        "seed, and differences under about one point are within what another seed moves "
        "(docs/plugins.md).",
        "",
    ]
    rows = over_seeds(rows)
    for task in sorted({r["task"] for r in rows}):
        rs = [r for r in rows if r["task"] == task]
        by_setting = {r["setting"]: r for r in rs}
        teacher = next((r for r in rs if r["method"] == "teacher"), None)
        note = teacher["extras"].get("teacher_note") if teacher else None
        out.append(f"### {task}" + (f" ({note})" if note else ""))
        out.append("")
        out.append(
            "| method | setting | score | vs teacher | FLOPs | latency b1 | latency b32 | size MB |"
        )
        out.append("|---|---|---|---|---|---|---|---|")
        with_signal = [r for r in rs if signal(r)]
        for r in rs:
            ref = r.get("reference_score")
            delta = "" if ref is None or r is teacher else f"{r['score'] - ref:+.2f}"
            score = _score_cell(r) if r in with_signal else f"{_score_cell(r)} ({NO_SIGNAL})"
            out.append(
                f"| {r['method']} | {r['setting']} | {score} | {delta} | "
                f"{r['extras'].get('flops_ratio', float('nan')):.2f} | {_ratio(r, 1)} | "
                f"{_ratio(r, 32)} | {r['extras'].get('size_on_disk', 0) / 2**20:.1f} |"
            )
        out.append("")
        ref = teacher["score"] if teacher else None
        for axis, label in COST_AXES.items():
            dom = dominance(with_signal, axis)
            if not dom:
                continue
            wins = [d for d in dom if d["verdict"] == "dominates"]
            alone = [d for d in dom if d["verdict"] == "alone"]
            near = [d for d in alone if ref is not None and d["score"] >= ref - 1.0]
            text = "; ".join(
                f"{d['setting']} ({d['margin']:+.2f} over {d['best_single'][0]}; "
                f"{_seed_note(d, by_setting)})"
                for d in wins
            )
            line = f"- {label}: " + (
                f"beats every single method it can afford: {text}."
                if wins
                else "no stack beats the best single method it can afford."
            )
            if near:
                line += (
                    " Cheaper than every single method and within 1 point of the teacher: "
                    + "; ".join(
                        f"{d['setting']} ({d['score'] - ref:+.2f}, "
                        f"{_n_seeds(by_setting[d['setting']])})"
                        for d in near
                    )
                    + "."
                )
            if len(alone) > len(near):
                line += f" ({len(alone) - len(near)} more stacks are cheaper than any single "
                line += "method but more than 1 point below the teacher.)"
            out.append(line)
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------- one task
def run_task(task_name: str, args: argparse.Namespace, sink: ResultsSink) -> list[dict]:
    from gearshift.jobs import teacher_dir
    from gearshift.measure.report import machine_description, now_iso
    from gearshift.train.finetune import training_finished

    task = get_task(task_name)
    tdir = teacher_dir(task.name) / "best"
    if args.teacher:
        tdir = Path(args.teacher)
    elif not training_finished(teacher_dir(task.name)):
        print(
            f"[compose] {task.name}: no finished teacher at {tdir}; skipped "
            "(train it with benchmarks/teachers.py)"
        )
        return []
    root = Path(args.runs) / task.name
    tok = load_tokenizer(str(tdir))
    art = build_artifacts(task, tdir, root, args.quick, args.train_steps, args.seed)
    stacks = make_stacks(art, root, task, tok, args.seed)
    shared = {}
    if args.shared:
        steps = 20 if args.quick else args.train_steps
        shared = shared_stacks(Path(args.shared), root, task, tok, steps, args.quick)
    if args.build_only:
        for name, folder in {**stacks, **shared}.items():
            print(f"[compose] {task.name} stack {name}: {folder}")
        return []
    dev = TaskData.load(task, tok, "dev", limit=args.dev_limit)
    points = points_for(task, stacks)
    if args.seed != SEED:  # a seed study: only the points with trained parts (and the teacher)
        points = [p for p in points if p.method == "teacher" or trained(p)]
    if shared:
        points += shared_points(task, shared, args.shared_label)
    loaded: dict[Path, Stack] = {}
    for p in points:
        if p.stack_dir not in loaded:
            loaded[p.stack_dir] = load_stack(p.stack_dir)
    metric = task.main_metric
    rows = []
    ref_score = None
    for p in points:
        stack = loaded[p.stack_dir]
        metrics, flops = score_point(stack, p.run, dev)
        if p.method == "teacher":
            ref_score = metrics[metric]
        rows.append(
            {
                "task": task.name,
                "model": "minilm-l6",
                "method": p.method,
                "setting": p.setting,
                "metric": metric,
                "score": metrics[metric],
                "flops_dynamic": flops,
                "params": sum(t.numel() for t in stack.state_dict().values()),
                "reference_score": None,
                "seed": args.seed if trained(p) else None,
                "command": command_line("benchmarks/compose.py", args.argv),
                "date": now_iso(),
                "machine": machine_description(),
                "extras": {
                    "engine": "eager",
                    "stack_dir": str(p.stack_dir),
                    "stack_setting": p.run,
                    "size_on_disk": folder_bytes(p.stack_dir),
                    "dev_metrics": metrics,
                    "quick": args.quick,
                    "seeds": "1 seed (plugin and exit heads trained once, seed 42)",
                },
            }
        )
        print(
            f"[compose] {task.name} {p.setting}: {metric} {metrics[metric]:.2f}, "
            f"{flops / 1e6:.1f} MFLOPs"
        )
    for r in rows:
        r["reference_score"] = ref_score
        r["extras"]["teacher"] = str(tdir)
        if args.teacher_note:
            r["extras"]["teacher_note"] = args.teacher_note
        r["extras"]["flops_ratio"] = r["flops_dynamic"] / rows[0]["flops_dynamic"]
    if args.seed != SEED:
        rows = [r for r in rows if r["method"] != "teacher"]  # seed 42's run records it
        for r in rows:
            r["extras"]["timing"] = {
                "how": f"not timed: a seed study (seed {args.seed}); the table takes the "
                "latency of the seed-42 row"
            }
    elif args.skip_timing:
        for r in rows:
            r["extras"]["timing"] = {"how": "not timed yet: run with --retime"}
    else:
        time_rows(task, rows, points, loaded, tok, args)
    sink.add(rows)
    plot(task, rows, root, args)
    return rows


def plot(task, rows, root: Path, args) -> None:
    rows = [r for r in rows if r.get("seed") in (None, SEED)]  # the timed run
    if not rows or any(r.get("latency_ratio_b32") is None for r in rows):  # a seed study
        return
    plot_tradeoff(
        rows,
        RESULTS.with_name(f"compose_{task.name}.png") if not args.quick else root / "plot.png",
        x="latency_ratio_b32",
        title=f"{task.name}: stacks vs single methods (MiniLM-L6 teacher, eager)",
    )


def retime_task(task_name: str, args: argparse.Namespace, sink: ResultsSink) -> list[dict]:
    """Re-time the recorded rows of ``task_name`` from their saved stack folders."""
    task = get_task(task_name)
    # seed studies are not timed: their rows take seed 42's latency
    rows = [r for r in sink.rows if r["task"] == task.name and r.get("seed") in (None, SEED)]
    if not rows:
        print(f"[compose] {task.name}: no recorded rows to re-time")
        return []
    rows.sort(key=lambda r: r["method"] != "teacher")  # the reference first
    missing = [
        r["extras"]["stack_dir"] for r in rows if not Path(r["extras"]["stack_dir"]).is_dir()
    ]
    if missing:
        print(
            f"[compose] {task.name}: saved stacks are gone ({missing[0]} ...): rebuild them "
            f"with `python benchmarks/compose.py --tasks {task.name}`"
        )
        return []
    loaded: dict[Path, Stack] = {}
    points = []
    for r in rows:
        d = Path(r["extras"]["stack_dir"])
        if d not in loaded:
            loaded[d] = load_stack(d)
        points.append(Point(r["method"], r["setting"], d, r["extras"].get("stack_setting") or {}))
    tok = load_tokenizer(str(points[0].stack_dir))
    time_rows(task, rows, points, loaded, tok, args)
    for r in rows:
        r["extras"]["timing"]["command"] = command_line("benchmarks/compose.py", args.argv)
    sink.add(rows)
    plot(task, rows, Path(args.runs) / task.name, args)
    return rows


def time_rows(task, rows, points, loaded, tok, args) -> None:
    """Latency ratios by the shared protocol, every point interleaved with the teacher."""
    protocol = (
        QUICK
        if args.quick
        else TimingProtocol(
            threads=args.threads, warmup=args.warmup, repeats=args.repeats, rounds=args.rounds
        )
    )
    texts = dev_texts(task, 256)
    batches = {1: make_batch(tok, texts, 1), 32: make_batch(tok, texts, 32)}
    candidates = {}
    for i, p in enumerate(points):
        stack = loaded[p.stack_dir]
        fn = forward_fn(stack)

        def run(batch, fn=fn, stack=stack, setting=p.run):
            with stack.using(setting):
                return fn(batch)

        candidates[f"p{i}"] = run
    from gearshift.measure.retime import load_per_core

    load = load_per_core()
    timed = retime(candidates, batches, "p0", protocol, allow_load=args.allow_load)
    for i, row in enumerate(rows):
        for size, res in timed.items():
            row[f"latency_ratio_b{size}"] = res.ratios[f"p{i}"]
            row["extras"].setdefault("latency_spread", {})[f"b{size}"] = list(res.spread[f"p{i}"])
            row["extras"].setdefault("latency_ms", {})[f"b{size}"] = res.median_ms[f"p{i}"]
        spread = row["extras"]["latency_spread"]
        row["extras"]["timing"] = {
            "how": "gearshift.measure.retime: every point interleaved with the teacher in one "
            "process, fixed threads, warm-up, median over rounds",
        }
        # the report's record of a protocol re-time (report.timing_label)
        row["extras"]["retime"] = {
            "protocol": asdict(protocol),
            "ratio_b1_spread": spread["b1"],
            "ratio_b32_spread": spread["b32"],
            "load_per_core": load,
            "quiet": load <= protocol.max_load,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", nargs="+", default=["mrpc", "stsb", "sst2"])
    p.add_argument("--teacher", help="a teacher folder to use instead of the cached one")
    p.add_argument(
        "--teacher-note", help="what that teacher is (shown beside the task in the report)"
    )
    p.add_argument("--threads", type=int, default=1)
    defaults = TimingProtocol()
    p.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed calls")
    p.add_argument("--repeats", type=int, default=defaults.repeats, help="timed calls per round")
    p.add_argument("--rounds", type=int, default=defaults.rounds, help="interleaved rounds")
    p.add_argument(
        "--train-steps",
        type=int,
        default=150,
        help="steps for each plugin (batch 16) and each set of exit heads (batch 32)",
    )
    p.add_argument("--dev-limit", type=int, help="first N dev examples (default: all)")
    p.add_argument("--runs", default="runs/compose", help="where artifacts are cached")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, under runs/")
    p.add_argument(
        "--allow-load", action="store_true", help="time on a busy machine (the load is recorded)"
    )
    p.add_argument(
        "--skip-timing", action="store_true", help="build and score only (time later: --retime)"
    )
    p.add_argument(
        "--retime", action="store_true", help="re-time the recorded rows from their saved stacks"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=SEED,
        help="seed of the plugins and exit heads (default 42, the timed run); another seed "
        "is a seed study: it trains its own heads (folders *-s<seed>), scores the points "
        "with trained parts and writes their rows untimed, beside seed 42's",
    )
    p.add_argument(
        "--shared",
        help="a parameter-shared model fine-tuned on the (one) task, e.g. the steps "
        "benchmark's runs/steps/shared-g2-step-aware-ln/sst2/best: adds steps alone and "
        "steps + exits (exit heads trained here) to the points",
    )
    p.add_argument(
        "--shared-label",
        default="shared g2 step-aware",
        help="how the shared model's rows name it",
    )
    p.add_argument(
        "--build-only",
        action="store_true",
        help="build (or resume) the artifacts and stack folders only; write no rows (for "
        "benchmarks that measure the stacks themselves, such as frontier.py and serve.py)",
    )
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    if args.shared and len(args.tasks) != 1:
        p.error("--shared is one task's model: give one task with --tasks")
    if args.seed != SEED and (args.retime or args.shared):
        p.error(
            "--seed is a seed study of the trained heads: it is never timed, and the shared "
            "model was trained once (give --seed without --retime / --shared)"
        )
    torch.set_num_threads(args.threads)
    if args.quick:
        args.runs = str(Path(args.runs) / "quick")
        args.dev_limit = args.dev_limit or 48
        args.allow_load = True
    sink = ResultsSink(RESULTS if not args.quick else Path(args.runs) / "compose.json", "compose")
    for task in args.tasks:
        if args.retime:
            retime_task(task, args, sink)
        else:
            run_task(task, args, sink)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
