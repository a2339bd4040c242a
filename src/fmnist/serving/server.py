"""Serve a run over HTTP: POST /predict, GET /health, and GET / (a page to try images by hand).

Bad input gets a JSON error whose status is the error's type (errors.py): 413 for a body or image
that is too large, 415 for something that is not an image, 400 for a damaged image or a bad form,
503 with Retry-After when the work queue is full. GET /metrics: Prometheus metrics (metrics.py);
GET /openapi.json: the schema (schema.py).

Admission is on work, not on sockets: connections are cheap, predictions are not. What a connection, a
request and the admitted work may hold is limits.py's; admitted images go through the model in batches
(batching.py).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import importlib.resources
import io
import logging
import socket
import threading
import uuid
from pathlib import Path

import fastapi
import fastapi.concurrency
import fastapi.middleware.trustedhost
import fastapi.responses
import numpy as np
import PIL.Image
import starlette.datastructures
import starlette.requests

from fmnist import runs
from fmnist.core import errors, threads
from fmnist.data import fashion, photos
from fmnist.nets import ensemble, inference
from fmnist.serving import batching, limits, metrics, schema, transport

EXAMPLES = 10  # test-set images offered on the page: the first of each class
PREVIEW_SCALE = 1  # the 28x28 view as the model sees it; the page scales it up sharp (CSS: pixelated)
log = logging.getLogger("uvicorn.error")  # uvicorn's server log: shown at `fmnist serve`'s log level


def png_data_url(pixels: np.ndarray, scale: int = PREVIEW_SCALE) -> str:
    image = PIL.Image.fromarray(pixels).resize((28 * scale,) * 2, PIL.Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class WorkQueue:
    """What the server holds at once: request bodies' bytes and admitted images. Used from the event loop only.

    Both bounds refuse with errors.Busy (503 + Retry-After): work past them would only wait longer."""

    def __init__(self, max_images: int = limits.WORK_QUEUE, max_bytes: int = limits.BODY_BUDGET):
        self.max_images, self.max_bytes = max_images, max_bytes
        self.images = self.bytes = 0

    def charge_bytes(self, count: int) -> None:
        if self.bytes + count > self.max_bytes:
            raise errors.Busy(f"the server holds {self.bytes:,} bytes of requests: try again shortly")
        self.bytes += count

    def admit(self, count: int) -> None:
        if self.images + count > self.max_images:
            raise errors.Busy(
                f"the work queue is full ({self.images:,} of {self.max_images:,} images): try again shortly"
            )
        self.images += count

    def release(self, images: int, count_bytes: int) -> None:
        """A request answered (or refused): what it held is free again."""
        self.images -= images
        self.bytes -= count_bytes


async def read_body(request: fastapi.Request, max_bytes: int, charge=lambda count: None) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `max_bytes`; `charge(n)` per chunk."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise fastapi.HTTPException(413, f"request body of {int(declared):,} bytes is over the limit of {max_bytes:,}")
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise fastapi.HTTPException(413, f"request body is over the limit of {max_bytes:,} bytes")
            charge(len(chunk))
            chunks.append(chunk)
    except starlette.requests.ClientDisconnect:
        log.info("client %s went away after %s bytes of its request", request.client, f"{total:,}")
        raise fastapi.HTTPException(400, "the client disconnected before sending the whole request") from None
    return b"".join(chunks)


async def uploaded_images(
    request: fastapi.Request, max_bytes: int, charge=lambda count: None
) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image in a multipart form, or the raw body as one image."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()  # case-insensitive
    body = await read_body(request, max_bytes, charge)
    if content_type == "multipart/form-data":

        async def replay() -> dict:  # the body already read (and counted), handed to Starlette's form parser
            return {"type": "http.request", "body": body, "more_body": False}

        form = await starlette.requests.Request(request.scope, replay).form(
            max_files=limits.MAX_FILES, max_fields=limits.MAX_FILES
        )  # more: 400 from Starlette
        files = [
            (upload.filename or key, await upload.read())
            for key, upload in form.multi_items()
            if isinstance(upload, starlette.datastructures.UploadFile)
        ]
        if not files:
            raise fastapi.HTTPException(400, "the form holds no file: send images as file fields")
        return files
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return [("body", body)]
    raise fastapi.HTTPException(415, f"send an image (image/*), raw bytes or a multipart form, not {content_type!r}")


def describe_run(run_dir: Path) -> dict:
    """The model's name and, where the run was evaluated, its test accuracy (for /health and the page)."""
    config = runs.read_config(run_dir)
    metrics = runs.read_json(run_dir / runs.METRICS) if (run_dir / runs.METRICS).is_file() else {}
    accuracy = metrics.get("test", {}).get("accuracy") if isinstance(metrics.get("test"), dict) else None
    members = config["ensemble"].get("members") if isinstance(config.get("ensemble"), dict) else None
    model = config.get("model", "seed-cnn")
    if isinstance(members, list):  # an ensemble (training/ensembles.py): its members' models
        named = [str(m.get("model"))[:40] for m in members[: ensemble.MAX_MEMBERS] if isinstance(m, dict)]
        model = "ensemble of " + ", ".join(named)
    return {"model": model, "test_accuracy": accuracy}


def example_images(data_dir: str | None) -> list[dict]:
    """The first test image of each class as a PNG data URL, with its class; [] without the dataset."""
    try:
        dataset = fashion.load(data_dir=data_dir, progress=False)
    except errors.FmnistError:
        return []
    firsts = [int(np.flatnonzero(dataset.test_labels == label)[0]) for label in range(fashion.NUM_CLASSES)]
    return [
        {
            "class": fashion.CLASS_NAMES[dataset.test_labels[i]],
            "index": i,
            "image": png_data_url(dataset.test_images[i]),
        }
        for i in firsts[:EXAMPLES]
    ]


class Predictor:
    """The work behind POST /predict: admission (WorkQueue), decoding (bounded), the model (batched)."""

    def __init__(self, network, max_bytes: int, max_pixels: int, work_queue: int):
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.work = WorkQueue(work_queue)
        self.metrics = metrics.ServerMetrics(queued=lambda: self.work.images)
        self.decoding = threading.BoundedSemaphore(min(limits.MAX_DECODES, threads.available_cpus()[0]))
        # Warm up before the first request: a fresh process's first forward pass sets up the CPU kernels, and a
        # Ray Serve replica takes traffic once this returns, so its first requests do not wait for that.
        inference.checked_probabilities(network, np.zeros((1, 28, 28), np.uint8))
        self.batcher = batching.DynamicBatcher(
            functools.partial(inference.checked_probabilities, network), on_batch=self.metrics.batches.observe
        )

    @staticmethod
    def prepared(name: str, raw: bytes, limit: int) -> tuple[np.ndarray, str]:
        """(28x28 pixels, their preview) of one upload of at most `limit` pixels."""
        pixels = photos.preprocess(photos.open_image(raw, name, limit))
        return pixels, png_data_url(pixels)

    def prepare(self, files: list[tuple[str, bytes]]) -> list[tuple[np.ndarray, str]]:
        """Decoding in a thread: as many at once as there are decode slots (it is what costs memory)."""
        with self.decoding:
            return [self.prepared(name, raw, self.max_pixels) for name, raw in files]

    def prepare_small(self, files: list[tuple[str, bytes]]) -> list[tuple[np.ndarray, str]] | None:
        """On the event loop, images small in bytes and in declared pixels (a tiny PNG may declare
        millions); None where one is not."""
        if sum(len(raw) for _, raw in files) > limits.INLINE_DECODE_BYTES:
            return None
        try:
            return [self.prepared(name, raw, limits.INLINE_DECODE_PIXELS) for name, raw in files]
        except errors.TooLarge:
            return None

    async def __call__(self, request: fastapi.Request) -> fastapi.responses.JSONResponse:
        held = admitted = 0

        def charge(count: int) -> None:
            nonlocal held
            self.work.charge_bytes(count)
            held += count

        try:
            files = await uploaded_images(request, self.max_bytes, charge)
            self.work.admit(len(files))
            admitted = len(files)
            # Decoding is CPU work: off the event loop, in threads, unless the upload is small enough that the
            # hop to a thread costs more than decoding it (~0.3 ms for a 28x28 PNG). The model runs in the batcher.
            images = self.prepare_small(files)
            if images is None:
                images = await fastapi.concurrency.run_in_threadpool(self.prepare, files)
            rows = await asyncio.wrap_future(self.batcher.submit(np.stack([pixels for pixels, _ in images])))
        finally:
            self.work.release(admitted, held)
        # A Response as it is: FastAPI's encoder need not walk the plain dicts again (no measurable gain alone).
        return fastapi.responses.JSONResponse(
            {
                "predictions": [
                    {"name": name, "top": top, "preprocessed": preview}
                    | ({"warning": photos.BLANK_WARNING} if photos.blank(pixels) else {})
                    for (name, _), top, (pixels, preview) in zip(files, inference.top_rows(rows), images)
                ]
            }
        )


def create_app(
    run_dir: Path,
    max_bytes: int = limits.MAX_BYTES,
    max_pixels: int = photos.MAX_PIXELS,
    allowed_hosts: list[str] | None = None,
    work_queue: int = limits.WORK_QUEUE,
    label: str | None = None,
    precision: str = "fp32",
) -> fastapi.FastAPI:
    """The app; `allowed_hosts` (Host header names) guards against DNS rebinding when given; `label` names
    the run in /health (default: run_dir); the model computes in `precision` (nets.INFERENCE_PRECISIONS)."""
    run_dir = Path(run_dir)
    predictor = Predictor(inference.load_model(run_dir, precision=precision), max_bytes, max_pixels, work_queue)
    about = {
        "run": label or run_dir.resolve().name,  # its name: no path of the server's disk in a response
        "classes": list(fashion.CLASS_NAMES),
        **describe_run(run_dir),
        "precision": precision,
        "instance": uuid.uuid4().hex[:12],
    }  # instance: which server (or Ray Serve replica) answered
    # No /docs or /redoc: their pages load scripts from a CDN. /openapi.json stays.
    app = fastapi.FastAPI(title="fmnist", description="Fashion-MNIST classifier", docs_url=None, redoc_url=None)
    add_protections(app, allowed_hosts)
    app.add_middleware(metrics.Measured, metrics=predictor.metrics)  # outermost: refusals by any layer count
    app.router.on_shutdown.append(predictor.batcher.close)
    page = importlib.resources.files("fmnist.serving").joinpath("static/index.html").read_text()
    examples = functools.cache(lambda: example_images(runs.read_config(run_dir).get("data_dir")))
    app.get("/", response_class=fastapi.responses.HTMLResponse)(lambda: page)

    @app.get("/health")
    def health():
        return {
            "status": "ok",
            **about,
            "work_queue": {"images": predictor.work.images, "limit": predictor.work.max_images},
        }

    @app.get("/examples")
    async def examples_route():
        return {"examples": await fastapi.concurrency.run_in_threadpool(examples)}

    app.get("/metrics", include_in_schema=False)(predictor.metrics.scrape)
    app.post(
        "/predict", response_model=schema.Predictions, responses=schema.REFUSALS, openapi_extra=schema.PREDICT_BODY
    )(predictor.__call__)
    return app


def add_protections(app: fastapi.FastAPI, allowed_hosts: list[str] | None) -> None:
    """Host names checked (when given), fmnist's errors as JSON with their type's status, nosniff everywhere."""
    if allowed_hosts:
        app.add_middleware(fastapi.middleware.trustedhost.TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.add_middleware(NoSniff)

    @app.exception_handler(errors.FmnistError)
    async def fmnist_error(request: fastapi.Request, exc: errors.FmnistError):
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, errors.Busy) else None
        return fastapi.responses.JSONResponse({"detail": str(exc)}, status_code=exc.http_status, headers=headers)


class NoSniff:
    """X-Content-Type-Options: nosniff on every response, as plain ASGI (a BaseHTTPMiddleware adds a task
    and a stream to every request; alone, the change was within the benchmark's noise)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, send_with_header)


def serve(
    run_dir: Path,
    sock: socket.socket,
    max_bytes: int = limits.MAX_BYTES,
    allowed_hosts: list[str] | None = None,
    precision: str = "fp32",
    request_timeout: float = limits.REQUEST_TIMEOUT_S,
) -> None:
    """Serve a run on a socket from `listening_socket` until Ctrl-C."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    app = create_app(
        run_dir, max_bytes, allowed_hosts=allowed_hosts or transport.default_allowed_hosts(host), precision=precision
    )
    config = transport.server_config(app, host, port, request_timeout, log_level="info", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
