"""gearshift serve through a real HTTP client against a server on a free loopback port."""

from __future__ import annotations

import asyncio
import json
import random

import httpx  # noqa: E402  (hard dependencies: a missing one fails, never skips)
import pytest

from gearshift.serve.app import GearServer, ServeConfig, create_app  # noqa: E402
from gearshift.serve.gears import GearSet  # noqa: E402
from gearshift.serve.table import GearTableError, parse_gear_table, read_gear_table  # noqa: E402
from gearshift.serve.testing import ThreadServer, make_tiny_gears  # noqa: E402

WORDS = (
    "the a movie film was is great bad terrible wonderful plot acting long short boring fun".split()
)


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 20)))


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    return make_tiny_gears(tmp_path_factory.mktemp("gears"))


@pytest.fixture(scope="module")
def gearset(table_path):
    return GearSet(read_gear_table(table_path))


def start(gearset, **config):
    server = GearServer(gearset, ServeConfig(**config))
    return server, ThreadServer(create_app(server))


@pytest.fixture(scope="module")
def served(gearset):
    server, http = start(gearset, slo_ms=200, max_batch=16, max_delay_ms=5, max_queue=512)
    yield server, http
    http.stop()


def test_predict_gears_health_metrics(served):
    server, http = served
    with httpx.Client(base_url=http.url, timeout=30) as c:
        assert c.get("/healthz").json()["status"] == "ok"
        r = c.post("/v1/predict", json={"texts": ["a great movie", "terrible plot"]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["predictions"]) == 2
        for p in body["predictions"]:
            assert p["label"] in ("negative", "positive")
            assert abs(sum(p["probabilities"].values()) - 1) < 1e-5
            assert p["gear"] in ("full", "k2")
        assert body["latency_ms"] > 0 and body["queue_ms"] >= 0
        r = c.post("/v1/predict", json={"texts": ["a great movie"], "gear": "k2"})
        assert r.json()["predictions"][0]["gear"] == "k2"
        gears = c.get("/v1/gears").json()
        assert [g["name"] for g in gears["gears"]] == ["full", "k2"]
        assert gears["gear_in_use"] in ("full", "k2")
        text = c.get("/metrics").text
        for name in (
            'gearshift_requests_total{status="200"}',
            "gearshift_request_latency_seconds_bucket",
            "gearshift_queue_seconds_bucket",
            "gearshift_queue_depth",
            "gearshift_batch_size_bucket",
            'gearshift_gear_in_use{gear="full"}',
            'gearshift_texts_total{gear="k2"}',
        ):
            assert name in text, name
        stats = c.get("/v1/stats").json()
        assert sum(b["arrivals"] for b in stats["series"]) >= 3
        page = c.get("/")
        assert (
            page.status_code == 200
            and "<canvas" in page.text
            and "http" not in page.text.split("<script>")[1]
        )


def test_concurrent_mixed_gears_equal_single_runs(served, gearset):
    """>= 200 concurrent requests in mixed gears get the answer of each text run alone."""
    _, http = served
    rng = random.Random(0)
    jobs = []
    for _ in range(240):
        texts = [sentence(rng) for _ in range(rng.randint(1, 3))]
        jobs.append((texts, rng.choice([None, "full", "k2"])))

    async def go():
        async with httpx.AsyncClient(base_url=http.url, timeout=60) as c:

            async def one(texts, gear):
                body = {"texts": texts} if gear is None else {"texts": texts, "gear": gear}
                return await c.post("/v1/predict", json=body)

            return await asyncio.gather(*(one(t, g) for t, g in jobs))

    responses = asyncio.run(go())
    batched = 0
    for (texts, gear), r in zip(jobs, responses):
        assert r.status_code == 200, r.text
        for text, p in zip(texts, r.json()["predictions"]):
            if gear is not None:
                assert p["gear"] == gear
            alone = gearset.predict(p["gear"], [text])[0]
            assert p["label"] == alone["label"], text
            for k, v in alone["probabilities"].items():
                assert abs(p["probabilities"][k] - v) < 1e-4, (text, p["gear"])
    text = httpx.get(http.url + "/metrics").text
    for line in text.splitlines():  # batching happened: some model calls took > 1 text
        if line.startswith('gearshift_batch_size_bucket{le="1.0"}'):
            batched = float(line.split()[-1])
        if line.startswith("gearshift_batch_size_count"):
            total = float(line.split()[-1])
    assert batched < total


@pytest.mark.parametrize(
    "body, field",
    [
        ({"texts": []}, "texts"),
        ({"texts": [""]}, "texts[0]"),
        ({"texts": ["ok", "   "]}, "texts[1]"),
        ({"texts": ["x" * 100_000]}, "texts[0]"),
        ({"texts": "not a list"}, "texts"),
        ({"texts": [1, 2]}, "texts[0]"),
        ({"texts": ["ok"], "gear": 3}, "gear"),
        ({"texts": ["ok"], "gear": "turbo"}, "gear"),
        ({"text": ["ok"]}, "texts"),
        ({"texts": ["ok"], "text_pairs": ["a"]}, "text_pairs"),
        ({"texts": ["ok"], "deadline_ms": -1}, "deadline_ms"),
    ],
)
def test_bad_input_names_the_field(served, body, field):
    _, http = served
    r = httpx.post(http.url + "/v1/predict", json=body, timeout=30)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["field"] == field, r.json()
    assert field in r.json()["detail"]


def test_bad_json_is_4xx(served):
    _, http = served
    r = httpx.post(
        http.url + "/v1/predict",
        content=b"{not json",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 422


def test_pair_task_needs_text_pairs(tmp_path):
    table = make_tiny_gears(tmp_path, pair=True)
    server, http = start(GearSet(read_gear_table(table)), slo_ms=200)
    try:
        r = httpx.post(http.url + "/v1/predict", json={"texts": ["a b"]}, timeout=30)
        assert r.status_code == 422 and r.json()["field"] == "text_pairs"
        r = httpx.post(
            http.url + "/v1/predict",
            json={"texts": ["a b", "c"], "text_pairs": ["d"]},
            timeout=30,
        )
        assert r.status_code == 422 and r.json()["field"] == "text_pairs"
        r = httpx.post(
            http.url + "/v1/predict", json={"texts": ["a b"], "text_pairs": ["c d"]}, timeout=30
        )
        assert r.status_code == 200, r.text
    finally:
        http.stop()


def test_overload_gives_429_and_bounded_queue(gearset):
    """A queue of 16 texts behind a slow model: the rest get 429 with Retry-After; every
    request is answered (200 or 429), the queue never holds more than its bound."""
    import time

    server, http = start(gearset, slo_ms=50, max_batch=4, max_delay_ms=1, max_queue=16)
    slow = server.batcher.run

    def slowed(gear, texts, pairs):
        time.sleep(0.05)
        return slow(gear, texts, pairs)

    server.batcher.run = slowed
    depths = []

    async def go():
        async with httpx.AsyncClient(base_url=http.url, timeout=60) as c:

            async def one(i):
                depths.append(server.batcher.depth)
                return await c.post("/v1/predict", json={"texts": [f"text {i}", "more"]})

            return await asyncio.gather(*(one(i) for i in range(120)))

    try:
        responses = asyncio.run(go())
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 429}, set(codes)
        assert codes.count(429) > 0 and codes.count(200) > 0
        rejected = next(r for r in responses if r.status_code == 429)
        assert int(rejected.headers["Retry-After"]) >= 1
        assert max(depths) <= 16
        assert httpx.get(http.url + "/healthz").status_code == 200
        assert 'gearshift_requests_total{status="429"}' in httpx.get(http.url + "/metrics").text
    finally:
        http.stop()


def test_deadline_gives_504(gearset):
    import time

    server, http = start(gearset, slo_ms=50, max_batch=1, max_delay_ms=0, max_queue=64)
    slow = server.batcher.run

    def slowed(gear, texts, pairs):
        time.sleep(0.1)
        return slow(gear, texts, pairs)

    server.batcher.run = slowed

    async def go():
        async with httpx.AsyncClient(base_url=http.url, timeout=60) as c:
            return await asyncio.gather(
                *(
                    c.post("/v1/predict", json={"texts": ["x y"], "deadline_ms": 150})
                    for _ in range(6)
                )
            )

    try:
        codes = [r.status_code for r in asyncio.run(go())]
        assert 200 in codes and 504 in codes, codes
    finally:
        http.stop()


def test_gear_table_schema_errors(table_path):
    data = json.loads(table_path.read_text())
    assert parse_gear_table(data).names == ["full", "k2"]
    cases = [
        ({**data, "kind": "model"}, "'kind'"),
        ({**data, "gears": []}, "'gears'"),
        ({**data, "gears": [{**data["gears"][0], "model": "nope"}]}, "gears[0].model"),
        ({**data, "gears": [{**data["gears"][0], "latency_ms": {"x": 1}}]}, "gears[0].latency_ms"),
        ({**data, "gears": [data["gears"][0], data["gears"][0]]}, "appears twice"),
        ({**data, "task": {"name": "t", "kind": "ner"}}, "task.kind"),
        ({**data, "models": {}}, "'models'"),
    ]
    for bad, needle in cases:
        with pytest.raises(GearTableError, match=None) as info:
            parse_gear_table(bad)
        assert needle in str(info.value), (needle, str(info.value))
    bad_setting = {**data, "gears": [{**data["gears"][0], "setting": {"plugins": "k9"}}]}
    with pytest.raises(GearTableError, match="k9"):
        GearSet(parse_gear_table(bad_setting))
    with pytest.raises(GearTableError, match="does not exist"):
        read_gear_table(table_path.parent / "missing.json")


def test_serve_a_model_without_a_gear_table(table_path):
    """`gearshift serve --model DIR`: one gear, its latency measured at start."""
    from gearshift.serve.cli import single_gear_table

    gearset = single_gear_table(str(table_path.parent / "model"))
    assert gearset.names == ["full"]
    assert set(gearset.table.gears[0].latency_ms) == {1, 8, 32}
    assert gearset.table.task.label_names == ["negative", "positive"]
    server, http = start(gearset, slo_ms=100)
    try:
        r = httpx.post(http.url + "/v1/predict", json={"texts": ["fine"]}, timeout=30)
        assert r.status_code == 200 and r.json()["gear"] == "full"
    finally:
        http.stop()
        server.close()


def test_overload_shifts_gear_visibly(gearset, caplog):
    """A burst behind a slow model: the controller shifts down, /metrics counts the shift,
    /v1/gears shows the gear in use and one log line names it."""
    import logging
    import time

    server, http = start(gearset, slo_ms=100, max_batch=4, max_delay_ms=1, max_queue=128)
    slow = server.batcher.run

    def slowed(gear, texts, pairs):
        time.sleep(0.03)
        return slow(gear, texts, pairs)

    server.batcher.run = slowed

    async def go():
        async with httpx.AsyncClient(base_url=http.url, timeout=60) as c:
            return await asyncio.gather(
                *(c.post("/v1/predict", json={"texts": [f"text {i}"]}) for i in range(48))
            )

    try:
        with caplog.at_level(logging.WARNING, logger="gearshift.serve"):
            responses = asyncio.run(go())
        assert all(r.status_code == 200 for r in responses)
        assert {r.json()["gear"] for r in responses} == {"full", "k2"}
        text = httpx.get(http.url + "/metrics").text
        assert 'gearshift_gear_shifts_total{from_gear="full",to_gear="k2"} 1.0' in text
        assert any("gear shift full -> k2" in m for m in caplog.messages)
        assert httpx.get(http.url + "/v1/gears").json()["gear_in_use"] == "k2"
    finally:
        http.stop()
        server.close()
