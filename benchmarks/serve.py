"""Serving under changing load: adaptive gear shifting against static gears.

    python benchmarks/serve.py --gears runs/serve/sst2-gears.json      # the real run
    python benchmarks/serve.py --quick                                 # smoke run (seconds)

The gear table comes from ``gearshift gears build`` on the machine that serves (the SST-2
teacher and its plugins for the real run, e.g. ``gearshift gears build --model
~/.cache/gearshift/teachers/minilm-l6/sst2/best --task sst2 --plugin k2=DIR --plugin k4=DIR
--plugin k8=DIR --output runs/serve/sst2-gears.json``). ``--quick`` builds a table of a
tiny random model (MiniLM's tokenizer, a k=2 plugin) on 32 SST-2 dev sentences instead:
its rows say nothing about gearshift, they only show the script runs end to end.

Method. The server runs as its own process (``gearshift serve``, uvicorn on 127.0.0.1) on
every core but the last, the load generator on the last (``--server-cpus``,
``--client-cpus``: sharing cores, the server's model and HTTP threads starve the client and
its sends leave late). The client sends open-loop Poisson arrivals with aiohttp, one real
SST-2 dev sentence per request (in order, cycled; the label is kept to score the answer;
bodies encoded before the clock starts). Each send's lateness is recorded, and a policy
run whose p99 lateness exceeds ``--max-send-lag-ms`` is marked ``valid: false`` and gets no
verdict. First the full gear's capacity is measured: a closed loop of ``2 x max batch``
clients against the server fixed at the reference gear (the table's ``full``: the teacher
as it is, fp32, no plugin; a faster gear that happens to score higher on dev is not the
"full model") for ``--capacity-s`` seconds (answers per second).
The trace then steps through ``--multipliers`` x that capacity, ``--phase-s`` seconds each
(default 0.5x, 1x, 2x, 3x, 2x, 1x, 0.5x: up to 3x and back). Policies, each on a fresh
server with the same admission control (bounded queue, 429 when full, the same deadline):

- ``adaptive``: the controller (``--policy adaptive``);
- ``static-full``: fixed at the reference gear, the teacher (like a server with TEI's
  max-concurrent-requests);
- ``static-fastest``: fixed at the fastest gear at the largest batch.

Per policy and load multiplier (and over the whole trace, ``load_multiplier: "trace"``):
``slo_attainment`` (answered within the SLO, over all sent), ``goodput`` (answers within
the SLO per second), ``p50_ms``/``p99_ms`` (client-side latency of answered requests),
``share_429``, ``accuracy_answered`` and ``effective_accuracy`` (correct and within the
SLO, over all sent). Rows go to ``benchmarks/results/serve.json`` (``--quick``:
``runs/serve-quick/serve.json``, never mixed with real rows), with a plot of load, gear and
p99 over time (``serve.png``) and the table with the targets' verdicts (``serve.md``) beside
them.
Bounded: at most ``--max-requests`` per policy, and each phase lasts its ``--phase-s``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q / 100 * len(v)) - 1))]


# ---------------------------------------------------------------------- the server process
class ServerProcess:
    """``gearshift serve`` on a free loopback port, stopped with SIGTERM."""

    def __init__(self, table: Path, slo_ms: float, policy: str, gear: str | None, args) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "gearshift.cli",
            "serve",
            "--gears",
            str(table),
            "--port",
            str(self.port),
            "--slo-ms",
            str(slo_ms),
            "--max-batch",
            str(args.max_batch),
            "--max-delay-ms",
            str(args.max_delay_ms),
            "--max-queue",
            str(args.max_queue),
            "--policy",
            policy,
        ]
        if gear:
            cmd += ["--gear", gear]
        env = dict(os.environ)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        self.log = tempfile.TemporaryFile(mode="w+")
        cpus = args.server_cpus_set
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )

    def wait_ready(self, seconds: float = 180) -> None:
        import httpx

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"gearshift serve exited:\n{self.log.read()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError("gearshift serve did not start in time")

    def shifts_log(self) -> list[str]:
        self.log.seek(0)
        return [line.strip() for line in self.log if "gear shift" in line]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# ---------------------------------------------------------------------- load
def split_cpus(server: str | None, client: str | None) -> tuple[set[int], set[int]]:
    """The cores the server and the client run on: by default the last core for the
    client and the rest for the server, so that neither steals the other's CPU (on a 2-core
    machine the server's model and HTTP threads would otherwise starve the client, whose
    sends then leave late). ``"0,1"``-style lists override; ``"all"`` shares every core."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []

    def parse(spec: str | None, default: list[int]) -> set[int]:
        if spec is None:
            return set(default)
        if spec == "all":
            return set(cores)
        return {int(c) for c in spec.split(",")}

    if len(cores) < 2:
        return set(cores), set(cores)
    return parse(server, cores[:-1]), parse(client, cores[-1:])


def _session(timeout_s: float, url: str):
    """An aiohttp client session on ``url`` with no connection cap (an open loop must never
    wait for a free connection: uvicorn answers one request at a time per connection)."""
    import aiohttp

    return aiohttp.ClientSession(
        base_url=url,
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        headers={"content-type": "application/json"},
    )


def _bodies(texts: list[str]) -> list[bytes]:
    """Each request body encoded once, before the clock starts (the client's own cost per
    request stays small beside the server's)."""
    return [json.dumps({"texts": [t]}).encode() for t in texts]


async def measure_capacity(url: str, texts: list[str], clients: int, seconds: float) -> float:
    """Answers per second of a closed loop of ``clients`` clients (one text per request)."""
    bodies = _bodies(texts)
    done = 0
    async with _session(60, url) as c:

        async def loop(i: int) -> None:
            nonlocal done
            k = i
            while time.monotonic() < stop_at:
                async with c.post("/v1/predict", data=bodies[k % len(bodies)]) as r:
                    await r.read()
                    if r.status == 200:
                        done += 1
                k += clients

        # a short warm-up, then the timed loop
        async with c.post("/v1/predict", data=bodies[0]) as r:
            await r.read()
        start = time.monotonic()
        stop_at = start + seconds
        await asyncio.gather(*(loop(i) for i in range(clients)))
        return done / (time.monotonic() - start)


def poisson_trace(
    capacity: float, multipliers: list[float], phase_s: float, max_requests: int, seed: int
) -> list[tuple[float, float]]:
    """(send time in s from the start, load multiplier) of every request: a Poisson process
    whose rate steps through ``multipliers`` x ``capacity``; at most ``max_requests``."""
    rng = random.Random(seed)
    out: list[tuple[float, float]] = []
    t0 = 0.0
    for m in multipliers:
        rate = m * capacity
        t = t0
        while True:
            t += rng.expovariate(rate)
            if t >= t0 + phase_s or len(out) >= max_requests:
                break
            out.append((t, m))
        t0 += phase_s
    return out


async def run_trace(url: str, trace, examples, label_names, timeout_s: float) -> list[dict]:
    """Send every request of ``trace`` at its time (open loop); returns one record each.

    aiohttp, not httpx: at a few hundred requests per second httpx's client alone takes
    most of a core, so requests left late and the load was not what the trace says. The
    lateness of every send is recorded (``send_lag_ms``) and gates the run's validity."""

    bodies = _bodies([ex.text_a for ex in examples])
    records: list[dict] = []
    # no collector pauses while sending: with hundreds of requests in flight a full
    # collection stalls the loop for tens of milliseconds and sends leave late
    gc.collect()
    gc.disable()
    try:
        return await _send_all(url, trace, examples, label_names, timeout_s, bodies, records)
    finally:
        gc.enable()


async def _send_all(url, trace, examples, label_names, timeout_s, bodies, records) -> list[dict]:
    import aiohttp

    async with _session(timeout_s, url) as c:
        start = time.monotonic()

        async def one(i: int, at: float, mult: float) -> None:
            ex = examples[i % len(examples)]
            rec = {"i": i, "t": at, "load": mult, "status": None, "latency_ms": None}
            sent = time.monotonic()
            rec["send_lag_ms"] = (sent - start - at) * 1000
            try:
                async with c.post("/v1/predict", data=bodies[i % len(bodies)]) as r:
                    payload = await r.read()
                    rec["latency_ms"] = (time.monotonic() - sent) * 1000
                    rec["status"] = r.status
                if rec["status"] == 200:
                    p = json.loads(payload)["predictions"][0]
                    rec["gear"] = p["gear"]
                    rec["correct"] = p["label"] == label_names[ex.label]
            except (TimeoutError, aiohttp.ClientError) as exc:
                rec["status"] = f"error: {type(exc).__name__}"
            records.append(rec)

        tasks = []
        for i, (at, mult) in enumerate(trace):
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, at, mult)))
        await asyncio.gather(*tasks)
    return sorted(records, key=lambda r: r["i"])


def client_check(records: list[dict], cpu_s: float, wall_s: float, lag_ms: float) -> dict:
    """Whether the client sent the trace it was given: the p99 lateness of its sends and
    the share of a core it used. A run whose p99 send lag exceeds ``lag_ms`` measured a
    load other than the trace's and is marked invalid (its rows carry ``valid: false``)."""
    lags = [r["send_lag_ms"] for r in records]
    p99 = percentile(lags, 99) or 0.0
    return {
        "send_lag_p99_ms": p99,
        "send_lag_max_ms": max(lags, default=0.0),
        "client_cpu_share": cpu_s / wall_s if wall_s else None,
        "valid": p99 <= lag_ms,
    }


def summarize(records: list[dict], slo_ms: float, seconds: float) -> dict:
    sent = len(records)
    answered = [r for r in records if r["status"] == 200]
    within = [r for r in answered if r["latency_ms"] <= slo_ms]
    lat = [r["latency_ms"] for r in answered]
    return {
        "sent": sent,
        "answered": len(answered),
        "slo_attainment": len(within) / sent if sent else None,
        "goodput": len(within) / seconds if seconds else None,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "share_429": sum(r["status"] == 429 for r in records) / sent if sent else None,
        "share_other_errors": sum(r["status"] not in (200, 429) for r in records) / sent
        if sent
        else None,
        "accuracy_answered": 100 * sum(r["correct"] for r in answered) / len(answered)
        if answered
        else None,
        "effective_accuracy": 100 * sum(r["correct"] for r in within) / sent if sent else None,
        "gears": {
            g: sum(r.get("gear") == g for r in answered) for g in {r.get("gear") for r in answered}
        },
        "max_send_lag_ms": max((r["send_lag_ms"] for r in records), default=0.0),
    }


def per_second(records: list[dict], gears: list[str]) -> list[dict]:
    """Per second of the trace: arrivals, p99 of those answered, the most used gear."""
    out = []
    if not records:
        return out
    for s in range(int(max(r["t"] for r in records)) + 1):
        rs = [r for r in records if s <= r["t"] < s + 1]
        lat = [r["latency_ms"] for r in rs if r["status"] == 200]
        used = [r["gear"] for r in rs if r.get("gear")]
        gear = max(set(used), key=used.count) if used else None
        out.append(
            {
                "t": s,
                "arrivals": len(rs),
                "p99_ms": percentile(lat, 99),
                "gear": gear,
                "gear_rank": gears.index(gear) if gear in gears else None,
            }
        )
    return out


def plot(series: dict[str, list[dict]], gears: list[str], slo_ms: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for policy, rows in series.items():
        t = [r["t"] for r in rows]
        axes[0].plot(t, [r["arrivals"] for r in rows], label=policy)
        axes[1].step(t, [r["gear_rank"] for r in rows], where="post", label=policy)
        axes[2].plot(t, [r["p99_ms"] for r in rows], label=policy)
    axes[0].set_ylabel("arrivals / s")
    axes[1].set_yticks(range(len(gears)), gears)
    axes[1].invert_yaxis()
    axes[1].set_ylabel("gear (most accurate on top)")
    axes[2].axhline(slo_ms, color="grey", linestyle="--", label="SLO")
    axes[2].set_ylabel("p99 latency (ms)")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("seconds into the trace")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------------- the report
def _row(rows: list[dict], policy: str, load) -> dict | None:
    """The row of ``policy`` at ``load``; None when absent or from an invalid run (the client
    fell behind its trace, so the load was not the one named)."""
    r = next((r for r in rows if r["policy"] == policy and r["load_multiplier"] == load), None)
    return r if r is not None and r.get("valid", True) else None


def verdicts(rows: list[dict]) -> list[tuple[str, bool | None, str]]:
    """The targets, each (claim, met: True/False/None when unmeasured, the numbers):
    at 3x load adaptive keeps >= 99% within the SLO where static-full does not; at 0.5x its
    accuracy is within 0.2 points of static-full's; over the whole trace its effective
    accuracy beats both static policies."""
    out: list[tuple[str, bool | None, str]] = []
    a3, f3 = _row(rows, "adaptive", 3), _row(rows, "static-full", 3)
    claim = "3x load: adaptive >= 99% within the SLO, static-full not"
    if a3 and f3:
        met = a3["slo_attainment"] >= 0.99 and f3["slo_attainment"] < 0.99
        nums = f"{a3['slo_attainment']:.3f} vs {f3['slo_attainment']:.3f}"
        if a3.get("capacity_fastest") and a3.get("capacity_full"):
            head = a3["capacity_fastest"] / a3["capacity_full"]
            nums += (
                f"; the fastest gear ({a3.get('fastest_gear')}) answers {head:.2f}x the full "
                "gear's closed-loop capacity on this machine"
                + (": no policy can carry 3x" if head < 3 else "")
            )
        out.append((claim, met, nums))
    else:
        out.append((claim, None, "not measured"))
    a, f = _row(rows, "adaptive", 0.5), _row(rows, "static-full", 0.5)
    claim = "0.5x load: adaptive's accuracy within 0.2 points of static-full's"
    if a and f and a["accuracy_answered"] is not None and f["accuracy_answered"] is not None:
        gap = f["accuracy_answered"] - a["accuracy_answered"]
        out.append(
            (claim, gap <= 0.2, f"{a['accuracy_answered']:.2f} vs {f['accuracy_answered']:.2f}")
        )
    else:
        out.append((claim, None, "not measured"))
    at = _row(rows, "adaptive", "trace")
    others = [_row(rows, p, "trace") for p in ("static-full", "static-fastest")]
    claim = "whole trace: adaptive's effective accuracy beats both static policies"
    if at and all(others):
        met = all(at["effective_accuracy"] > o["effective_accuracy"] for o in others)
        nums = " vs ".join(f"{r['effective_accuracy']:.2f}" for r in [at, *others])
        out.append((claim, met, nums))
    else:
        out.append((claim, None, "not measured"))
    return out


def markdown_section(rows: list[dict]) -> str:
    """The rows as a markdown table per policy and load, then the targets' verdicts."""

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [
        "| policy | load | sent | SLO attainment | goodput/s | p50 ms | p99 ms | 429 share "
        "| accuracy answered | effective accuracy | send lag p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['load_multiplier']} | {r['sent']} | "
            f"{f(r['slo_attainment'], '.3f')} | {f(r['goodput'], '.1f')} | "
            f"{f(r['p50_ms'], '.1f')} | {f(r['p99_ms'], '.1f')} | {f(r['share_429'], '.3f')} | "
            f"{f(r['accuracy_answered'], '.2f')} | {f(r['effective_accuracy'], '.2f')} | "
            f"{f((r.get('client') or {}).get('send_lag_p99_ms'), '.1f')}"
            f"{'' if r.get('valid', True) else ' (invalid)'} |"
        )
    lines.append("")
    for claim, met, nums in verdicts(rows):
        word = {True: "met", False: "not met", None: "not measured or invalid"}[met]
        lines.append(f"- {claim}: **{word}** ({nums})")
    if rows and rows[0].get("quick"):
        lines.append(
            "- these rows come from `--quick` (a tiny random model): they test the script only"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- main
def quick_table(folder: Path) -> Path:
    from gearshift.data import get_task
    from gearshift.serve.build import build_gear_table
    from gearshift.serve.testing import make_tiny_gears

    make_tiny_gears(folder)
    out = folder / "quick-gears.json"
    build_gear_table(
        str(folder / "model"),
        get_task("sst2"),
        out,
        plugins=[f"k2={folder / 'k2'}"],
        dev_limit=32,
        sizes=(1, 8, 32),
        repeats=3,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    work = Path(tempfile.mkdtemp(prefix="gearshift-serve-bench-"))
    try:
        return run(argv, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(argv: list[str] | None, work: Path) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gears", help="gear table (gearshift gears build) of the SST-2 model")
    ap.add_argument("--quick", action="store_true", help="tiny random model, seconds: a smoke run")
    ap.add_argument("--slo-ms", type=float, default=100.0)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--max-queue", type=int, default=256)
    ap.add_argument("--multipliers", type=float, nargs="+", default=[0.5, 1, 2, 3, 2, 1, 0.5])
    ap.add_argument("--phase-s", type=float, default=20.0, help="seconds per load step")
    ap.add_argument("--capacity-s", type=float, default=10.0)
    ap.add_argument("--max-requests", type=int, default=100_000, help="per policy")
    ap.add_argument("--policies", nargs="+", default=["adaptive", "static-full", "static-fastest"])
    ap.add_argument("--threads", type=int, help="OMP threads of the server process")
    ap.add_argument("--dev-limit", type=int, help="SST-2 dev sentences to send (cycled)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--server-cpus",
        help="cores of the server process, e.g. 0 or 0,1 ('all': every core; default: all "
        "but the last)",
    )
    ap.add_argument("--client-cpus", help="cores of the load generator (default: the last core)")
    ap.add_argument(
        "--max-send-lag-ms",
        type=float,
        default=5.0,
        help="a policy run whose p99 send lateness exceeds this is invalid (no verdict)",
    )
    ap.add_argument("--output", help="results JSON (default benchmarks/results/serve.json)")
    args = ap.parse_args(argv)
    args.server_cpus_set, client_cpus = split_cpus(args.server_cpus, args.client_cpus)
    if client_cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, client_cpus)

    from gearshift.data import get_task, load_examples
    from gearshift.measure.report import machine_description
    from gearshift.serve.table import read_gear_table

    sys.path.insert(0, str(HERE))
    from report import command_line

    if args.quick:
        args.phase_s, args.capacity_s = min(args.phase_s, 1.5), min(args.capacity_s, 1.5)
        args.multipliers = (
            [0.5, 3, 0.5] if args.multipliers == ap.get_default("multipliers") else args.multipliers
        )
        args.max_requests = min(args.max_requests, 1500)
        args.dev_limit = args.dev_limit or 64
        table_path = quick_table(work)
        output = Path(args.output) if args.output else Path("runs/serve-quick/serve.json")
    else:
        if not args.gears:
            ap.error("pass --gears G.json (from `gearshift gears build`), or --quick")
        table_path = Path(args.gears)
        output = Path(args.output) if args.output else RESULTS / "serve.json"
    table = read_gear_table(table_path)
    if table.task.name != "sst2" and not args.quick:
        print(f"note: the gear table is for {table.task.name}; sentences come from SST-2 dev")
    task = get_task("sst2")
    examples = load_examples(task, "dev", limit=args.dev_limit)
    label_names = list(task.label_names)
    texts = [e.text_a for e in examples]
    full = table.reference.name
    fastest = table.fastest(args.max_batch).name
    policies = {
        "adaptive": ("adaptive", None),
        "static-full": ("fixed", full),
        "static-fastest": ("fixed", fastest),
    }

    # closed-loop capacity of the full gear (the trace's unit) and of the fastest (what the
    # gear table promises at the top of the trace: its measured ratio to the full gear's
    # is the most any policy can carry)
    capacities = {}
    for gear_name in dict.fromkeys([full, fastest]):
        server = ServerProcess(table_path, args.slo_ms, "fixed", gear_name, args)
        try:
            server.wait_ready()
            capacities[gear_name] = asyncio.run(
                measure_capacity(server.url, texts, 2 * args.max_batch, args.capacity_s)
            )
        finally:
            server.stop()
        print(f"capacity of gear {gear_name}: {capacities[gear_name]:.1f} answers/s")
    capacity = capacities[full]
    trace = poisson_trace(capacity, args.multipliers, args.phase_s, args.max_requests, args.seed)

    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    command = command_line("serve.py", argv)
    machine = machine_description()
    rows, series = [], {}
    for name in args.policies:
        policy, gear = policies[name]
        server = ServerProcess(table_path, args.slo_ms, policy, gear, args)
        try:
            server.wait_ready()
            cpu0, wall0 = time.process_time(), time.monotonic()
            records = asyncio.run(run_trace(server.url, trace, examples, label_names, timeout_s=60))
            check = client_check(
                records,
                time.process_time() - cpu0,
                time.monotonic() - wall0,
                args.max_send_lag_ms,
            )
            shifts = server.shifts_log()
        finally:
            server.stop()
        series[name] = per_second(records, table.names)
        common = {
            "policy": name,
            "gear": gear,
            "slo_ms": args.slo_ms,
            "capacity_full": capacity,
            "capacity_fastest": capacities[fastest],
            "fastest_gear": fastest,
            "seed": args.seed,
            "command": command,
            "date": date,
            "machine": machine,
            "quick": args.quick,
            "gear_table": str(table_path),
            "client": check,
            "valid": check["valid"],
            "server_cpus": sorted(args.server_cpus_set),
            "client_cpus": sorted(client_cpus),
        }
        for m in sorted(set(args.multipliers)):
            rs = [r for r in records if r["load"] == m]
            seconds = args.phase_s * args.multipliers.count(m)
            rows.append({**common, "load_multiplier": m, **summarize(rs, args.slo_ms, seconds)})
        total = args.phase_s * len(args.multipliers)
        rows.append(
            {
                **common,
                "load_multiplier": "trace",
                "gear_shifts": len(shifts),
                **summarize(records, args.slo_ms, total),
            }
        )
        last = rows[-1]
        print(
            f"{name:15s} slo {last['slo_attainment']:.3f} eff.acc {last['effective_accuracy']:.2f} "
            f"p99 {last['p99_ms']:.1f} ms 429 {last['share_429']:.3f} shifts {len(shifts)} "
            f"send lag p99 {check['send_lag_p99_ms']:.1f} ms, client {check['client_cpu_share']:.0%}"
            f" of a core{'' if check['valid'] else ' - INVALID: the client fell behind the trace'}"
        )

    from gearshift.atomic import write_json_atomic, write_text_atomic

    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output, {"rows": rows, "series": series}, indent=1)
    png = output.with_suffix(".png")
    plot(series, table.names, args.slo_ms, png)
    section = markdown_section(rows)
    write_text_atomic(output.with_suffix(".md"), section)
    print(section)
    print(f"rows: {output}\nplot: {png}\ntable: {output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
