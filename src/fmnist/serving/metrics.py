"""GET /metrics: what a server did, in Prometheus's text format (prometheus_client, the standard library).

    fmnist_requests_total{route, status}    requests answered
    fmnist_request_seconds{route}           from the request's first byte in the app to the response's last
    fmnist_refusals_total{status}           requests answered with an error: 400 bad input, 413 too large,
                                            415 not an image, 503 busy (server.py's module docstring)
    fmnist_batch_images                     images per model call (the dynamic batcher's batches)
    fmnist_work_queue_images                images admitted and not yet answered (its bound: limits.WORK_QUEUE)

One registry per app, not the client's global one: two apps in one process (tests, a benchmark) count
apart, and each Ray Serve replica answers for itself. Routes are the app's own or "other": a client
cannot grow the label set by asking for paths.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import prometheus_client
import starlette.responses

ROUTES = ("/", "/health", "/examples", "/predict", "/metrics", "/openapi.json")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)  # up to batching.MAX_BATCH
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServerMetrics:
    """The server's counters, histograms and gauge; `queued()` reads the work queue's depth when scraped."""

    def __init__(self, queued: Callable[[], float]):
        self.registry = on = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter(
            "fmnist_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=on
        )
        self.latency = prometheus_client.Histogram(
            "fmnist_request_seconds",
            "Time to answer a request, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=on,
        )
        self.refusals = prometheus_client.Counter(
            "fmnist_refusals", "Requests answered with an error, by status", ["status"], registry=on
        )
        self.batches = prometheus_client.Histogram(
            "fmnist_batch_images", "Images per model call", buckets=BATCH_BUCKETS, registry=on
        )
        queue = prometheus_client.Gauge("fmnist_work_queue_images", "Images admitted and not yet answered", registry=on)
        queue.set_function(queued)

    def scrape(self) -> starlette.responses.Response:
        """GET /metrics: everything, in the text format."""
        body = prometheus_client.generate_latest(self.registry)
        return starlette.responses.Response(body, media_type=prometheus_client.CONTENT_TYPE_LATEST)

    def answered(self, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.refusals.labels(str(status)).inc()


class Measured:
    """ASGI: each HTTP request's route, status and time into `metrics` once its response has been sent."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500  # no response sent at all: the server failed it

        async def send_seen(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_seen)
        finally:
            self.metrics.answered(scope["path"], status, time.perf_counter() - start)
