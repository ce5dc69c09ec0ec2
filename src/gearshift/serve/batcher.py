"""Dynamic batching on one worker thread, with a bounded queue and per-request deadlines.

:meth:`Batcher.submit` puts a request's texts in the queue as one unit, or raises
:class:`QueueFull` (the server answers 429) when they do not fit in ``max_queue`` texts, so
memory stays bounded whatever the load. The worker thread takes the oldest texts, waits up
to ``max_delay_ms`` after the oldest one arrived for up to ``max_batch`` texts, asks the
policy for a gear, and runs each gear's texts as one batch (texts whose request pinned a
gear run in that gear). Texts whose deadline passed before they ran are answered with
:class:`DeadlineExceeded` and never run. :meth:`close` stops new submissions, lets the
worker answer everything already queued, and joins it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from gearshift.serve.policy import LoadState, Policy

logger = logging.getLogger("gearshift.serve")


class QueueFull(Exception):
    """The queue has no room for the request; ``retry_after_s`` is a hint for the client."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("the queue is full")
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    """The request's deadline passed before it ran."""


class Closed(Exception):
    """The batcher is shutting down and takes no new requests."""


@dataclass
class Item:
    """One text waiting to run."""

    text: str
    pair: str | None
    gear: str | None  # pinned by the request, else None (the policy decides)
    arrived: float
    deadline: float
    future: Future = field(default_factory=Future)
    started: float = 0.0


@dataclass
class BatchRecord:
    """What one batch did (for the metrics and the status page)."""

    gear: str
    size: int
    seconds: float
    queue_len: int
    auto: bool


class RateMeter:
    """Arrivals per second over the last ``window_s`` seconds (a bounded deque of buckets)."""

    def __init__(self, window_s: float = 2.0, bucket_s: float = 0.1) -> None:
        self.window_s, self.bucket_s = window_s, bucket_s
        self._buckets: collections.deque[list[float]] = collections.deque()
        self._lock = threading.Lock()

    def add(self, n: int, now: float) -> None:
        with self._lock:
            key = now - now % self.bucket_s
            if self._buckets and self._buckets[-1][0] == key:
                self._buckets[-1][1] += n
            else:
                self._buckets.append([key, float(n)])
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] < now - self.window_s:
            self._buckets.popleft()

    def rate(self, now: float) -> float:
        with self._lock:
            self._trim(now)
            return sum(n for _, n in self._buckets) / self.window_s


class Batcher:
    """The queue and the one worker thread that runs the model (see the module)."""

    def __init__(
        self,
        run: Callable[[str, list[str], list[str] | None], list[Any]],
        policy: Policy,
        max_batch: int = 32,
        max_delay_ms: float = 5.0,
        max_queue: int = 256,
        on_batch: Callable[[BatchRecord], None] | None = None,
        on_shift: Callable[[str, str, LoadState], None] | None = None,
        batch_latency_ms: Callable[[str, int], float] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < max_batch:
            raise ValueError("need max_batch >= 1 and max_queue >= max_batch")
        self.run, self.policy = run, policy
        self.max_batch, self.max_delay_s, self.max_queue = max_batch, max_delay_ms / 1000, max_queue
        self.on_batch, self.on_shift = on_batch, on_shift
        self.batch_latency_ms = batch_latency_ms
        self.rate = RateMeter()
        self._queue: collections.deque[Item] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self.current_gear: str | None = getattr(policy, "current", None)
        self._thread = threading.Thread(target=self._loop, name="gearshift-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ clients
    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(
        self, texts: list[str], pairs: list[str] | None, gear: str | None, deadline_s: float
    ) -> list[Future]:
        """Queue ``texts`` as one unit; returns one future per text (raises QueueFull)."""
        now = time.monotonic()
        with self._cond:
            if self._closing:
                raise Closed()
            if len(self._queue) + len(texts) > self.max_queue:
                raise QueueFull(self._retry_after(now))
            items = [
                Item(t, None if pairs is None else pairs[i], gear, now, now + deadline_s)
                for i, t in enumerate(texts)
            ]
            self._queue.extend(items)
            self._cond.notify()
        self.rate.add(len(texts), now)
        return [it.future for it in items]

    def _retry_after(self, now: float) -> float:
        """Seconds until the queue has drained enough to take a request (at least 1)."""
        gear = self.current_gear
        per_batch = 0.05
        if self.batch_latency_ms is not None and gear is not None:
            per_batch = self.batch_latency_ms(gear, self.max_batch) / 1000
        return max(1.0, per_batch * len(self._queue) / self.max_batch)

    def close(self, timeout: float = 60.0) -> None:
        """Take no new requests, answer everything queued, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ the worker
    def _take(self) -> tuple[list[Item], int, float] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait(0.5)
            first = self._queue[0].arrived
            while len(self._queue) < self.max_batch and not self._closing:
                left = first + self.max_delay_s - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            depth = len(self._queue)
            oldest = (time.monotonic() - self._queue[0].arrived) * 1000
            n = min(self.max_batch, depth)
            return [self._queue.popleft() for _ in range(n)], depth, oldest

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            items, depth, oldest_ms = taken
            now = time.monotonic()
            state = LoadState(
                queue_len=depth,
                oldest_wait_ms=oldest_ms,
                arrival_rate=self.rate.rate(now),
                max_batch=self.max_batch,
                max_delay_ms=self.max_delay_s * 1000,
                now=now,
            )
            try:
                chosen = self.policy.choose(state)
            except Exception:
                logger.exception("the policy failed; keeping gear %s", self.current_gear)
                chosen = self.current_gear
            if chosen != self.current_gear and self.current_gear is not None:
                if self.on_shift is not None:
                    self.on_shift(self.current_gear, chosen, state)
            self.current_gear = chosen
            live: list[Item] = []
            for it in items:
                if now > it.deadline:
                    it.future.set_exception(DeadlineExceeded())
                else:
                    live.append(it)
            groups: dict[str, list[Item]] = {}
            for it in live:
                groups.setdefault(it.gear or chosen, []).append(it)
            for gear, group in groups.items():
                self._run_group(gear, group, depth, auto=group[0].gear is None)

    def _run_group(self, gear: str, group: list[Item], depth: int, auto: bool) -> None:
        start = time.monotonic()
        for it in group:
            it.started = start
        try:
            pairs = [it.pair for it in group] if group[0].pair is not None else None
            answers = self.run(gear, [it.text for it in group], pairs)
        except Exception as exc:  # a broken batch fails its requests, not the server
            logger.exception("batch of %d in gear %s failed", len(group), gear)
            for it in group:
                it.future.set_exception(exc)
            return
        seconds = time.monotonic() - start
        observe = getattr(self.policy, "observe", None)
        if observe is not None:
            try:
                observe(gear, len(group), seconds)
            except Exception:
                logger.exception("the policy's observe failed")
        for it, answer in zip(group, answers):
            it.future.set_result((answer, gear, it))
        if self.on_batch is not None:
            self.on_batch(BatchRecord(gear, len(group), seconds, depth, auto))
