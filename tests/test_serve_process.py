"""`gearshift serve` as a process: SIGTERM stops accepting and answers everything in flight."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx  # noqa: E402  (a hard dependency: a missing one fails, never skips)
import pytest

from gearshift.serve.testing import free_port, make_tiny_gears  # noqa: E402


def wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early:\n{proc.stdout.read()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become healthy in time")


def test_sigterm_drains_every_request_in_flight(tmp_path):
    table = make_tiny_gears(tmp_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gearshift.cli",
            "serve",
            "--gears",
            str(table),
            "--port",
            str(port),
            "--max-batch",
            "64",
            "--max-delay-ms",
            "1500",  # the batch waits: every request below is queued when SIGTERM comes
            "--slo-ms",
            "5000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        wait_healthy(url, proc)

        async def go():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                tasks = [
                    asyncio.create_task(c.post("/v1/predict", json={"texts": [f"text number {i}"]}))
                    for i in range(40)
                ]
                for _ in range(100):  # until all 40 texts sit in the queue
                    stats = (await c.get("/v1/stats")).json()
                    if stats["queue_depth"] == 40:
                        break
                    await asyncio.sleep(0.02)
                assert stats["queue_depth"] == 40, stats["queue_depth"]
                proc.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks)

        responses = asyncio.run(go())
        assert [r.status_code for r in responses] == [200] * 40
        assert all(len(r.json()["predictions"]) == 1 for r in responses)
        # uvicorn re-raises the SIGTERM it caught once it has shut down cleanly
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        assert (
            "stopped after answering every request in flight (queue left: 0)" in proc.stdout.read()
        )
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
