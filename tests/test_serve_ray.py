"""The app as a Ray Serve deployment: 2 replicas on a local single-machine Ray answer as the
embedded server does. One module-scoped cluster, loopback only, no dashboard."""

from __future__ import annotations

import asyncio
import random
import time

import httpx  # noqa: E402
import pytest
import ray.serve  # noqa: E402,F401  (the ray extra, which scripts/setup.sh installs: a missing one fails)

from gearshift.serve.app import ServeConfig  # noqa: E402
from gearshift.serve.gears import GearSet  # noqa: E402
from gearshift.serve.table import read_gear_table  # noqa: E402
from gearshift.serve.testing import free_port, make_tiny_gears  # noqa: E402


@pytest.fixture(scope="module")
def ray_served(tmp_path_factory):
    from gearshift.serve.ray_app import _ray, start_ray_serve, stop_ray_serve

    ray, _ = _ray()  # with Ray's usage reports off

    table = make_tiny_gears(tmp_path_factory.mktemp("ray-gears"))
    port = free_port()
    ray.init(
        include_dashboard=False,
        num_cpus=2,
        configure_logging=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    try:
        start_ray_serve(str(table), ServeConfig(slo_ms=500), 2, "127.0.0.1", port)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield url, table
    finally:
        stop_ray_serve()


def test_two_replicas_answer_like_the_embedded_server(ray_served):
    from ray import serve

    url, table = ray_served
    status = serve.status().applications["gearshift"].deployments["gearshift"]
    assert sum(status.replica_states.values()) == 2 and status.status == "HEALTHY"
    gearset = GearSet(read_gear_table(table))
    rng = random.Random(1)
    words = "good bad film plot long short fun dull".split()
    jobs = [
        (
            [" ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))],
            rng.choice(["full", "k2"]),
        )
        for _ in range(40)
    ]

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            return await asyncio.gather(
                *(c.post("/v1/predict", json={"texts": t, "gear": g}) for t, g in jobs)
            )

    for (texts, gear), r in zip(jobs, asyncio.run(go())):
        assert r.status_code == 200, r.text
        p = r.json()["predictions"][0]
        alone = gearset.predict(gear, texts)[0]
        assert p["gear"] == gear and p["label"] == alone["label"]
        for k, v in alone["probabilities"].items():
            assert abs(p["probabilities"][k] - v) < 1e-4
    assert httpx.get(url + "/v1/gears", timeout=10).json()["gears"][0]["name"] == "full"
    assert "gearshift_requests_total" in httpx.get(url + "/metrics", timeout=10).text
