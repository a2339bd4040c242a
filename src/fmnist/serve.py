"""Serve a run over HTTP: POST /predict, GET /health, and GET / (a page to try images by hand).

Bad input gets a JSON error and the server keeps serving: 413 for a body or image that is too large,
415 for something that is not an image (or not an upload), 400 for a damaged image or an empty form.
"""
from __future__ import annotations

import base64
import importlib.resources
import io
from pathlib import Path

import fastapi
import fastapi.concurrency
import fastapi.responses
import numpy as np
import PIL.Image

from fmnist import data, errors, predict, runs

MAX_BYTES = 5 * 1024 * 1024
PREVIEW_SCALE = 8  # the 28x28 view is sent at 224x224 so a browser shows sharp pixels


def png_data_url(pixels: np.ndarray) -> str:
    image = PIL.Image.fromarray(pixels).resize((28 * PREVIEW_SCALE,) * 2, PIL.Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def status_for(error: errors.InputError) -> int:
    message = str(error)
    if "not an image format" in message:
        return 415
    if "pixels" in message and ("limit" in message or "too many" in message):
        return 413
    return 400


async def read_body(request: fastapi.Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise fastapi.HTTPException(413, f"request body of {int(declared):,} bytes is over the limit of {max_bytes:,}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            raise fastapi.HTTPException(413, f"request body is over the limit of {max_bytes:,} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's cache: lets request.form() parse what was already read
    return body


async def uploaded_images(request: fastapi.Request, max_bytes: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image in a multipart form, or the raw body as one image."""
    content_type = request.headers.get("content-type", "")
    body = await read_body(request, max_bytes)
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        files = [(upload.filename or key, await upload.read()) for key, upload in form.multi_items()
                 if hasattr(upload, "read")]
        if not files:
            raise fastapi.HTTPException(400, "the form holds no file: send images as file fields")
        return files
    if content_type.startswith(("image/", "application/octet-stream")):
        return [("body", body)]
    raise fastapi.HTTPException(415, f"send an image (image/*), raw bytes or a multipart form, not {content_type!r}")


def create_app(run_dir: Path, max_bytes: int = MAX_BYTES, max_pixels: int = predict.MAX_PIXELS) -> fastapi.FastAPI:
    network = runs.load_model(Path(run_dir))
    app = fastapi.FastAPI(title="fmnist", description="Fashion-MNIST classifier")
    page = importlib.resources.files("fmnist").joinpath("static/index.html").read_text()

    def classify(files: list[tuple[str, bytes]]) -> list[dict]:
        images = []
        for name, raw in files:
            try:
                images.append(predict.preprocess(predict.open_image(raw, name, max_pixels)))
            except errors.InputError as exc:
                raise fastapi.HTTPException(status_for(exc), str(exc)) from None
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


def serve(run_dir: Path, host: str = "127.0.0.1", port: int = 8000, max_bytes: int = MAX_BYTES) -> None:
    import uvicorn

    uvicorn.run(create_app(run_dir, max_bytes), host=host, port=port, log_level="info")
