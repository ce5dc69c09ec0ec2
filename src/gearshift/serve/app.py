"""The HTTP service: a :class:`GearServer` (gears, batcher, controller, metrics) and its
FastAPI app.

Endpoints: ``POST /v1/predict``, ``GET /v1/gears``, ``GET /v1/stats`` (the status page's
data), ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /`` (the status page).
:func:`create_app` builds the app around a server; its lifespan closes the batcher at
shutdown, after uvicorn has stopped accepting connections and every request in flight was
answered, so a SIGTERM loses nothing.
"""

import asyncio
import collections
import logging
import math
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from gearshift.errors import ConfigError
from gearshift.serve.batcher import Batcher, BatchRecord, Closed, DeadlineExceeded, QueueFull
from gearshift.serve.gears import GearSet
from gearshift.serve.policy import LoadState, make_policy
from gearshift.serve.table import GearTable

logger = logging.getLogger("gearshift.serve")


@dataclass
class ServeConfig:
    """How the server batches, admits and chooses gears (the ``gearshift serve`` flags)."""

    slo_ms: float = 100.0
    policy: str = "adaptive"
    gear: str | None = None
    max_batch: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 256
    max_concurrent: int | None = None  # requests in flight before 429 (default 2 x max_queue)
    max_texts: int = 64
    max_chars: int = 10_000
    deadline_ms: float | None = None  # default: 10 x the SLO
    max_length: int = 128
    history_s: int = 300

    def validate(self) -> None:
        if self.slo_ms <= 0:
            raise ConfigError(f"--slo-ms must be positive, got {self.slo_ms}")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.max_delay_ms < 0:
            raise ConfigError(f"--max-delay-ms must be >= 0, got {self.max_delay_ms}")
        if self.max_queue < self.max_batch:
            raise ConfigError(
                f"--max-queue ({self.max_queue}) must be at least --max-batch ({self.max_batch})"
            )
        if self.policy == "fixed" and not self.gear:
            raise ConfigError("--policy fixed needs --gear NAME (see GET /v1/gears)")

    @property
    def concurrency_limit(self) -> int:
        return self.max_concurrent or 2 * self.max_queue

    @property
    def deadline_s(self) -> float:
        return (self.deadline_ms if self.deadline_ms else 10 * self.slo_ms) / 1000


# ---------------------------------------------------------------------- metrics
class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self, gears: list[str]) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        lat = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5)
        self.requests = Counter(
            "gearshift_requests", "Requests answered, by HTTP status", ["status"], registry=r
        )
        self.latency = Histogram(
            "gearshift_request_latency_seconds",
            "Time from arrival to answer",
            buckets=lat,
            registry=r,
        )
        self.queue_time = Histogram(
            "gearshift_queue_seconds",
            "Time a text waited before its batch ran",
            buckets=lat,
            registry=r,
        )
        self.depth = Gauge("gearshift_queue_depth", "Texts waiting in the queue", registry=r)
        self.batch = Histogram(
            "gearshift_batch_size",
            "Texts per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.gear = Gauge(
            "gearshift_gear_in_use", "1 for the gear the controller runs now", ["gear"], registry=r
        )
        self.shifts = Counter(
            "gearshift_gear_shifts",
            "Gear shifts by the controller",
            ["from_gear", "to_gear"],
            registry=r,
        )
        self.texts = Counter("gearshift_texts", "Texts answered, by gear", ["gear"], registry=r)
        self.rate = Gauge(
            "gearshift_arrival_rate", "Texts arriving per second (recent window)", registry=r
        )
        for g in gears:
            self.gear.labels(gear=g).set(0)

    def set_gear(self, gear: str, gears: list[str]) -> None:
        for g in gears:
            self.gear.labels(gear=g).set(1 if g == gear else 0)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class History:
    """One-second buckets of arrivals, answers, rejections, p99 latency and the gear, for the
    status page; bounded to ``seconds`` buckets and ``per_bucket`` latencies each."""

    def __init__(self, seconds: int = 300, per_bucket: int = 4000) -> None:
        self._buckets: collections.deque[dict[str, Any]] = collections.deque(maxlen=seconds)
        self.per_bucket = per_bucket
        self._lock = threading.Lock()
        self.start = time.time()

    def _bucket(self, now: float) -> dict[str, Any]:
        t = int(now)
        if not self._buckets or self._buckets[-1]["t"] != t:
            self._buckets.append(
                {"t": t, "arrivals": 0, "answered": 0, "rejected": 0, "lat": [], "gear": None}
            )
        return self._buckets[-1]

    def arrived(self, n: int) -> None:
        with self._lock:
            self._bucket(time.time())["arrivals"] += n

    def rejected(self) -> None:
        with self._lock:
            self._bucket(time.time())["rejected"] += 1

    def answered(self, latency_ms: float) -> None:
        with self._lock:
            b = self._bucket(time.time())
            b["answered"] += 1
            if len(b["lat"]) < self.per_bucket:
                b["lat"].append(latency_ms)

    def gear(self, name: str) -> None:
        with self._lock:
            self._bucket(time.time())["gear"] = name

    def series(self) -> list[dict[str, Any]]:
        with self._lock:
            out = []
            by_t = {b["t"]: b for b in self._buckets}
            now = int(time.time())
            first = max(self._buckets[0]["t"], now - self._buckets.maxlen + 1) if by_t else now
            empty = {"arrivals": 0, "answered": 0, "rejected": 0, "lat": [], "gear": None}
            for t in range(first, now + 1):  # idle seconds count as zero arrivals
                b = by_t.get(t, {"t": t, **empty})
                lat = sorted(b["lat"])
                p99 = lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)] if lat else None
                out.append(
                    {
                        "t": b["t"],
                        "arrivals": b["arrivals"],
                        "answered": b["answered"],
                        "rejected": b["rejected"],
                        "p99_ms": p99,
                        "gear": b["gear"],
                    }
                )
            return out


# ---------------------------------------------------------------------- the server
class GearServer:
    """Gears, batcher, controller and metrics behind the HTTP endpoints."""

    def __init__(self, gearset: GearSet, config: ServeConfig) -> None:
        config.validate()
        self.gearset, self.config = gearset, config
        table: GearTable = gearset.table
        self.table = table
        if config.gear is not None:
            table.gear(config.gear)
        self.policy = make_policy(config.policy, table, config.slo_ms, config.gear)
        self.metrics = Metrics(table.names)
        self.history = History(config.history_s)
        self.shifts = 0
        self.inflight = 0  # requests being answered (touched on the event loop only)
        self.batcher = Batcher(
            gearset.predict,
            self.policy,
            max_batch=config.max_batch,
            max_delay_ms=config.max_delay_ms,
            max_queue=config.max_queue,
            on_batch=self._on_batch,
            on_shift=self._on_shift,
            batch_latency_ms=lambda g, b: table.gear(g).latency(b),
        )
        first = self.batcher.current_gear or table.gears[0].name
        self.metrics.set_gear(first, table.names)

    def _on_batch(self, rec: BatchRecord) -> None:
        self.metrics.batch.observe(rec.size)
        self.metrics.texts.labels(gear=rec.gear).inc(rec.size)
        self.metrics.depth.set(self.batcher.depth)
        if rec.auto:
            self.history.gear(rec.gear)

    def _on_shift(self, old: str, new: str, state: LoadState) -> None:
        self.shifts += 1
        self.metrics.shifts.labels(from_gear=old, to_gear=new).inc()
        self.metrics.set_gear(new, self.table.names)
        logger.warning(
            "gear shift %s -> %s (queue %d, oldest %.1f ms, arrivals %.1f/s, slo %.0f ms)",
            old,
            new,
            state.queue_len,
            state.oldest_wait_ms,
            state.arrival_rate,
            self.config.slo_ms,
        )

    def gears_json(self) -> dict[str, Any]:
        return {
            "task": self.table.task.to_dict(),
            "gears": [g.to_dict() for g in self.table.gears],
            "gear_in_use": self.batcher.current_gear,
            "policy": self.config.policy,
            "slo_ms": self.config.slo_ms,
        }

    def stats_json(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "slo_ms": self.config.slo_ms,
            "gears": self.table.names,
            "gear_in_use": self.batcher.current_gear,
            "queue_depth": self.batcher.depth,
            "arrival_rate": self.batcher.rate.rate(now),
            "shifts": self.shifts,
            "series": self.history.series(),
        }

    def close(self) -> None:
        self.batcher.close()


# ---------------------------------------------------------------------- the app
def _field_path(loc: tuple | list) -> str:
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


class FieldError(Exception):
    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


def create_app(server: GearServer, close_on_shutdown: bool = True):
    """The FastAPI app serving ``server``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

    from gearshift.serve.page import STATUS_PAGE

    cfg = server.config

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: list[StrictStr] = Field(description="the texts to classify (1 or more)")
        text_pairs: list[StrictStr] | None = Field(
            None, description="second texts, one per text, for pair tasks"
        )
        gear: StrictStr | None = Field(None, description="run in this gear (default: chosen)")
        deadline_ms: StrictFloat | StrictInt | None = Field(
            None, description="answer 504 when the texts have not run within this time"
        )

    @asynccontextmanager
    async def lifespan(app):
        yield
        if close_on_shutdown:
            await asyncio.get_running_loop().run_in_executor(None, server.close)
            print(
                f"gearshift serve: stopped after answering every request in flight "
                f"(queue left: {server.batcher.depth})",
                flush=True,
            )

    app = FastAPI(title="gearshift serve", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        field = _field_path(first.get("loc", ()))
        server.metrics.requests.labels(status="422").inc()
        return JSONResponse(
            status_code=422,
            content={"detail": f"{field}: {first.get('msg')}", "field": field},
        )

    @app.exception_handler(FieldError)
    async def _field_error(request: Request, exc: FieldError):
        server.metrics.requests.labels(status=str(exc.status)).inc()
        return JSONResponse(
            status_code=exc.status,
            content={"detail": f"{exc.field}: {exc.message}", "field": exc.field},
        )

    def check(req: PredictRequest) -> None:
        if not req.texts:
            raise FieldError(422, "texts", "give at least one text")
        if len(req.texts) > cfg.max_texts:
            raise FieldError(
                413, "texts", f"at most {cfg.max_texts} texts per request, got {len(req.texts)}"
            )
        for i, t in enumerate(req.texts):
            if not t.strip():
                raise FieldError(422, f"texts[{i}]", "empty text; send at least one character")
            if len(t) > cfg.max_chars:
                raise FieldError(
                    413, f"texts[{i}]", f"{len(t)} characters, more than the limit {cfg.max_chars}"
                )
        pair = server.table.task.pair
        if pair and req.text_pairs is None:
            raise FieldError(
                422,
                "text_pairs",
                f"task {server.table.task.name!r} takes pairs: send one text_pairs entry per text",
            )
        if req.text_pairs is not None:
            if not pair:
                raise FieldError(
                    422, "text_pairs", f"task {server.table.task.name!r} takes single texts"
                )
            if len(req.text_pairs) != len(req.texts):
                raise FieldError(
                    422,
                    "text_pairs",
                    f"{len(req.text_pairs)} text_pairs for {len(req.texts)} texts: give one each",
                )
            for i, t in enumerate(req.text_pairs):
                if not t.strip():
                    raise FieldError(422, f"text_pairs[{i}]", "empty text")
                if len(t) > cfg.max_chars:
                    raise FieldError(
                        413, f"text_pairs[{i}]", f"{len(t)} characters, limit {cfg.max_chars}"
                    )
        if req.gear is not None and req.gear not in server.table.names:
            raise FieldError(
                422,
                "gear",
                f"unknown gear {req.gear!r}; gears: {', '.join(server.table.names)}",
            )
        if req.deadline_ms is not None and req.deadline_ms <= 0:
            raise FieldError(422, "deadline_ms", "must be a positive number of milliseconds")

    def too_busy(detail: str, retry_after_s: float) -> JSONResponse:
        server.metrics.requests.labels(status="429").inc()
        server.history.rejected()
        return JSONResponse(
            status_code=429,
            headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))},
            content={"detail": detail},
        )

    @app.post("/v1/predict")
    async def predict(req: PredictRequest):
        t0 = time.monotonic()
        check(req)
        if server.inflight >= cfg.concurrency_limit:
            return too_busy(
                f"{server.inflight} requests in flight, the limit is {cfg.concurrency_limit}; "
                "retry later",
                1.0,
            )
        server.inflight += 1
        try:
            return await answer(req, t0)
        finally:
            server.inflight -= 1

    async def answer(req, t0: float):
        server.history.arrived(len(req.texts))
        deadline = req.deadline_ms / 1000 if req.deadline_ms else cfg.deadline_s
        try:
            futures = server.batcher.submit(req.texts, req.text_pairs, req.gear, deadline)
        except QueueFull as exc:
            return too_busy(
                f"the queue is full ({cfg.max_queue} texts); retry later", exc.retry_after_s
            )
        except Closed:
            server.metrics.requests.labels(status="503").inc()
            return JSONResponse(status_code=503, content={"detail": "the server is shutting down"})
        server.metrics.depth.set(server.batcher.depth)
        try:
            results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except DeadlineExceeded:
            server.metrics.requests.labels(status="504").inc()
            return JSONResponse(
                status_code=504,
                content={"detail": f"deadline of {deadline * 1000:.0f} ms passed before running"},
            )
        except Exception as exc:  # the model failed on this batch
            server.metrics.requests.labels(status="500").inc()
            return JSONResponse(status_code=500, content={"detail": f"model failed: {exc}"})
        done = time.monotonic()
        predictions = []
        queue_ms = 0.0
        for result, gear, item in results:
            predictions.append({**result, "gear": gear})
            wait = item.started - item.arrived
            queue_ms = max(queue_ms, wait * 1000)
            server.metrics.queue_time.observe(wait)
        latency = done - t0
        server.metrics.latency.observe(latency)
        server.metrics.requests.labels(status="200").inc()
        server.history.answered(latency * 1000)
        return {
            "predictions": predictions,
            "gear": predictions[0]["gear"],
            "latency_ms": latency * 1000,
            "queue_ms": queue_ms,
        }

    @app.get("/v1/gears")
    async def gears():
        return server.gears_json()

    @app.get("/v1/stats")
    async def stats():
        return server.stats_json()

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "gear_in_use": server.batcher.current_gear}

    @app.get("/metrics")
    async def metrics():
        server.metrics.depth.set(server.batcher.depth)
        server.metrics.rate.set(server.batcher.rate.rate(time.monotonic()))
        return Response(server.metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    async def status_page():
        return STATUS_PAGE

    return app


def build_server(table_path: str, config: ServeConfig) -> GearServer:
    """Load the gear table's models once and start the batcher."""
    from gearshift.serve.table import read_gear_table

    table = read_gear_table(table_path)
    return GearServer(GearSet(table, max_length=config.max_length), config)
