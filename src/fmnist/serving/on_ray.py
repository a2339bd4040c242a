"""`fmnist serve RUN --replicas N [--address HOST:PORT]`: the same app, as a Ray Serve deployment.

Ray Serve's HTTP proxy listens on --host/--port and routes each request to one of N replicas (Ray
actors, on this machine or across a cluster), each running server.create_app with its own batcher and
work queue: no load balancer of fmnist's own. The run's files (config, final weights, metrics) travel
with the deployment, so a replica on another machine needs fmnist installed, not the run directory.
A replica that dies is restarted by Ray Serve's controller; what a client sees meanwhile is measured in
tests/serving/test_on_ray.py: 500 for what the dead replica held, or 408 from the proxy after the request
timeout (limits.REQUEST_TIMEOUT_S, `--request-timeout`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fmnist import runs
from fmnist.core import errors, files
from fmnist.nets import inference
from fmnist.serving import limits, server, transport

RUN_FILES = {runs.CONFIG: runs.MAX_JSON_BYTES, runs.WEIGHTS: runs.MAX_FILE_BYTES, runs.METRICS: runs.MAX_JSON_BYTES}
APP_NAME = "fmnist"
# The proxy's end-to-end bound on a request is the request timeout. Ray Serve's default is none, and a request
# inside a replica that dies can then go unanswered: seen, 2 of 400 predictions held until the client gave up
# 120 s later. With it the proxy answers 408 instead. A replica's own work queue (limits.WORK_QUEUE, 503 past
# it) keeps the wait of a live request to seconds.
HEALTH_CHECK_S = 2  # how often Ray Serve's controller asks each replica (its default: 10 s)


def run_files(run_dir: Path) -> dict[str, bytes]:
    """The files a replica needs, each bounded as the run's own readers bound it (metrics are optional)."""
    return {
        name: files.read_regular(Path(run_dir) / name, limit)
        for name, limit in RUN_FILES.items()
        if name != runs.METRICS or (Path(run_dir) / name).is_file()
    }


def build_app(contents: dict[str, bytes], **options):
    """On a replica: the run's files into a private directory (removed when the app stops), then the app
    over it (the weights are checked there again)."""
    directory = tempfile.TemporaryDirectory(prefix="fmnist-replica-")
    for name, content in contents.items():
        (Path(directory.name) / name).write_bytes(content)
    app = server.create_app(Path(directory.name), **options)
    app.router.on_shutdown.append(directory.cleanup)
    return app


def require_ray_serve():
    errors.require("fmnist serve --replicas", "ray")


def deploy(
    run_dir: Path,
    replicas: int,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    cpus_per_replica: float = 1.0,
    max_bytes: int = limits.MAX_BYTES,
    allowed_hosts: list[str] | None = None,
    precision: str = "fp32",
    request_timeout: float = limits.REQUEST_TIMEOUT_S,
) -> None:
    """Start (or join) Ray, start Serve's proxy on host:port and deploy `replicas` replicas of the app."""
    if replicas < 1:
        raise errors.InputError(f"--replicas must be 1 or more, got {replicas}")
    if address is None:  # a local Ray instance: its proxy will listen on this machine, so the address is checked here
        transport.listening_socket(host, port).close()
    require_ray_serve()
    import ray
    from ray import serve as ray_serve

    contents = run_files(run_dir)
    inference.load_model(
        Path(run_dir), precision=precision
    )  # the run's weights checked here first: one clear error, not N replicas failing
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False)
    ray_serve.start(http_options={"host": host, "port": port, "request_timeout_s": request_timeout})
    options = {
        "max_bytes": max_bytes,
        "allowed_hosts": allowed_hosts or transport.default_allowed_hosts(host),
        "label": str(run_dir),
        "precision": precision,
    }

    def builder():  # a plain function: Ray Serve calls it on each replica (a partial it would take for the app)
        return build_app(contents, **options)

    deployment = ray_serve.deployment(
        ray_serve.ingress(builder)(),
        name=APP_NAME,
        num_replicas=replicas,
        ray_actor_options={"num_cpus": cpus_per_replica},
        health_check_period_s=HEALTH_CHECK_S,
    )
    ray_serve.run(deployment.bind(), name=APP_NAME, route_prefix="/")


def shutdown() -> None:
    from ray import serve as ray_serve

    ray_serve.shutdown()
