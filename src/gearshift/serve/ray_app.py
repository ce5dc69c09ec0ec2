"""The same app as a Ray Serve deployment (``gearshift serve --engine ray --replicas N``).

Each replica is one Ray actor that loads the gear table's models once and runs its own
batcher and controller (so each one shifts gears on the load it sees); the Ray Serve proxy
spreads requests over them. Ray is an optional extra (``pip install 'gearshift[ray]'``,
scripts/setup.sh installs it); the default engine stays plain uvicorn in one process.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from pathlib import Path
from typing import Any

from gearshift.errors import ConfigError


def _ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # send nothing off this machine
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise ConfigError(
            "--engine ray needs Ray Serve: pip install 'gearshift[ray]' (scripts/setup.sh does)"
        ) from exc
    return ray, serve


class GearshiftReplica:
    """One replica: a GearServer over the shared gear table, behind the FastAPI app."""

    def __init__(self, table_path: str, config: dict[str, Any]) -> None:
        from gearshift.serve.app import ServeConfig, build_server

        self.server = build_server(table_path, ServeConfig(**config))

    def __serve_build_asgi_app__(self):
        from gearshift.serve.app import create_app

        return create_app(self.server, close_on_shutdown=False)

    def __del__(self) -> None:  # Ray Serve calls this when it stops the replica
        server = getattr(self, "server", None)
        if server is not None:
            server.close()


def build_deployment(table_path: str, config, replicas: int):
    """The bound Ray Serve application: ``replicas`` copies of :class:`GearshiftReplica`."""
    _, serve = _ray()
    if replicas < 1:
        raise ConfigError(f"--replicas must be at least 1, got {replicas}")
    cls = serve.ingress()(GearshiftReplica)
    deployment = serve.deployment(
        name="gearshift",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": 0},  # the model calls set their own threads
        max_ongoing_requests=max(100, config.max_queue),
    )(cls)
    return deployment.bind(str(Path(table_path).resolve()), dataclasses.asdict(config))


def init_ray() -> None:
    """A local Ray on loopback, no dashboard (nothing done when one is running)."""
    ray, _ = _ray()
    if not ray.is_initialized():
        ray.init(
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
        )


def start_ray_serve(table_path: str, config, replicas: int, host: str, port: int) -> None:
    """Start Ray Serve on ``host:port`` (and a local Ray if none runs); returns when every
    replica is up."""
    _, serve = _ray()
    init_ray()
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_deployment(table_path, config, replicas), name="gearshift", route_prefix="/")


def stop_ray_serve() -> None:
    ray, serve = _ray()
    serve.shutdown()
    ray.shutdown()


def serve_with_ray(table_path: str, config, replicas: int, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM, then shut Ray Serve down (replicas drain their queues)."""
    init_ray()
    # after ray.init, which installs a SIGTERM handler of its own that kills the driver
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        start_ray_serve(table_path, config, replicas, host, port)
        print(f"gearshift serve (ray, {replicas} replicas): http://{host}:{port}/", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        stop_ray_serve()
        print("gearshift serve (ray): stopped", flush=True)
