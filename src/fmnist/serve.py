"""Serve a run over HTTP: POST /predict, GET /health, and GET / (a page to try images by hand).

Bad input gets a JSON error whose status is the error's type (errors.py): 413 for a body or image
that is too large, 415 for something that is not an image, 400 for a damaged image or a bad form.
What one client can cost is bounded:
- a request: MAX_BYTES of body, MAX_FILES images, each decoded to at most predict.MAX_PIXELS and
  shrunk at once (predict.WORKING_SIZE), at most CONCURRENT_DECODES images decoding at a time;
- a connection: the whole request must arrive within `request_timeout` seconds of the connection
  (or of the previous response): slow or idle clients are dropped, and a dropped client is one log line;
- the server: at most MAX_CONNECTIONS open connections (503 past that).
"""
from __future__ import annotations

import base64
import importlib.resources
import io
import ipaddress
import logging
import threading
from pathlib import Path

import fastapi
import fastapi.concurrency
import fastapi.middleware.trustedhost
import fastapi.responses
import h11
import numpy as np
import PIL.Image
import starlette.requests
from uvicorn.protocols.http.h11_impl import H11Protocol

from fmnist import data, errors, predict, runs

MAX_BYTES = 5 * 1024 * 1024
MAX_FILES = 32
CONCURRENT_DECODES = 2   # decoding is the memory-hungry step: this many at once, whatever the thread pool
REQUEST_TIMEOUT_S = 30
MAX_CONNECTIONS = 100
LOOPBACK_NAMES = ["127.0.0.1", "localhost"]
PREVIEW_SCALE = 8  # the 28x28 view is sent at 224x224 so a browser shows sharp pixels
log = logging.getLogger("uvicorn.error")  # uvicorn's server log: shown at `fmnist serve`'s log level


def png_data_url(pixels: np.ndarray) -> str:
    image = PIL.Image.fromarray(pixels).resize((28 * PREVIEW_SCALE,) * 2, PIL.Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def read_body(request: fastapi.Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise fastapi.HTTPException(413, f"request body of {int(declared):,} bytes is over the limit of {max_bytes:,}")
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise fastapi.HTTPException(413, f"request body is over the limit of {max_bytes:,} bytes")
            chunks.append(chunk)
    except starlette.requests.ClientDisconnect:
        log.info("client %s went away after %s bytes of its request", request.client, f"{total:,}")
        raise fastapi.HTTPException(400, "the client disconnected before sending the whole request") from None
    body = b"".join(chunks)
    request._body = body  # Starlette's cache: lets request.form() parse what was already read
    return body


async def uploaded_images(request: fastapi.Request, max_bytes: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image in a multipart form, or the raw body as one image."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()  # case-insensitive
    body = await read_body(request, max_bytes)
    if content_type == "multipart/form-data":
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)  # more: 400 from Starlette
        files = [(upload.filename or key, await upload.read()) for key, upload in form.multi_items()
                 if hasattr(upload, "read")]
        if not files:
            raise fastapi.HTTPException(400, "the form holds no file: send images as file fields")
        return files
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return [("body", body)]
    raise fastapi.HTTPException(415, f"send an image (image/*), raw bytes or a multipart form, not {content_type!r}")


def create_app(run_dir: Path, max_bytes: int = MAX_BYTES, max_pixels: int = predict.MAX_PIXELS,
               allowed_hosts: list[str] | None = None) -> fastapi.FastAPI:
    """The app; `allowed_hosts` (Host header names) guards against DNS rebinding when given."""
    network = runs.load_model(Path(run_dir))
    # No /docs or /redoc: their pages load scripts from a CDN. /openapi.json stays.
    app = fastapi.FastAPI(title="fmnist", description="Fashion-MNIST classifier", docs_url=None, redoc_url=None)
    add_protections(app, allowed_hosts)
    page = importlib.resources.files("fmnist").joinpath("static/index.html").read_text()
    decoding = threading.BoundedSemaphore(CONCURRENT_DECODES)

    def preprocessed(name: str, raw: bytes) -> np.ndarray:
        with decoding:
            return predict.preprocess(predict.open_image(raw, name, max_pixels))

    def classify(files: list[tuple[str, bytes]]) -> list[dict]:
        images = [preprocessed(name, raw) for name, raw in files]
        tops = predict.classify(network, np.stack(images))
        return [{"name": name, "top": top, "preprocessed": png_data_url(pixels)}
                for (name, _), top, pixels in zip(files, tops, images)]

    @app.get("/", response_class=fastapi.responses.HTMLResponse)
    def index():
        return page

    @app.get("/health")
    def health():
        return {"status": "ok", "run": str(run_dir), "classes": list(data.CLASS_NAMES)}

    @app.post("/predict")
    async def predict_images(request: fastapi.Request):
        files = await uploaded_images(request, max_bytes)
        # Decoding and inference are CPU work: run them off the event loop so the server stays responsive.
        return {"predictions": await fastapi.concurrency.run_in_threadpool(classify, files)}

    return app


def add_protections(app: fastapi.FastAPI, allowed_hosts: list[str] | None) -> None:
    """Host names checked (when given), fmnist's errors as JSON with their type's status, nosniff everywhere."""
    if allowed_hosts:
        app.add_middleware(fastapi.middleware.trustedhost.TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    @app.exception_handler(errors.FmnistError)
    async def fmnist_error(request: fastapi.Request, exc: errors.FmnistError):
        return fastapi.responses.JSONResponse({"detail": str(exc)}, status_code=exc.http_status)

    @app.middleware("http")
    async def no_sniffing(request: fastapi.Request, call_next):
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus a deadline for each request to arrive whole (head and body).

    uvicorn closes idle keep-alive connections only: a client that sends half a header, or a body one
    byte at a time, would hold its connection forever. Each cycle (connection made, or response sent)
    arms a timer; if the client is still sending when it fires, the connection is closed.
    """
    request_timeout: float = REQUEST_TIMEOUT_S
    deadline: object = None

    def arm_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = self.loop.call_later(self.request_timeout, self.drop_if_still_sending)

    def drop_if_still_sending(self) -> None:
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            log.info("closed a connection from %s: no whole request within %s s", self.client, self.request_timeout)
            self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.arm_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.arm_deadline()

    def connection_lost(self, exc) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        super().connection_lost(exc)


def server_config(app, host: str, port: int, request_timeout: float = REQUEST_TIMEOUT_S, **kwargs):
    """uvicorn's configuration with fmnist's limits on connections and slow clients."""
    import uvicorn

    protocol = type("DeadlineH11", (DeadlineH11Protocol,), {"request_timeout": request_timeout})
    return uvicorn.Config(app, host=host, port=port, http=protocol, limit_concurrency=MAX_CONNECTIONS,
                          timeout_keep_alive=5, **kwargs)


def default_allowed_hosts(host: str) -> list[str] | None:
    """Loopback binds answer only to loopback names (a page elsewhere cannot reach us by DNS rebinding)."""
    try:
        return LOOPBACK_NAMES if host == "localhost" or ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return None


def serve(run_dir: Path, host: str = "127.0.0.1", port: int = 8000, max_bytes: int = MAX_BYTES,
          allowed_hosts: list[str] | None = None) -> None:
    import uvicorn

    app = create_app(run_dir, max_bytes, allowed_hosts=allowed_hosts or default_allowed_hosts(host))
    uvicorn.Server(server_config(app, host, port, log_level="info")).run()
