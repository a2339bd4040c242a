"""Inference speed of a run, as its users meet it: test images/s in batches (evaluation), one image at a
time through the model (the model's part of a request), and one image per request through a real
`fmnist serve` server on loopback (sequential requests, so the figure is latency, not throughput).

    python benchmarks/inference_speed.py RUN [--requests 200] [--precision fp32 --precision bf16]

The server listens on a free loopback port of its own.
"""

from __future__ import annotations

import io
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import PIL.Image
import uvicorn

import fmnist  # noqa: F401  (first: it sets how OpenMP threads wait, before torch loads)
from fmnist.data import fashion
from fmnist.nets import inference
from fmnist.results import records
from fmnist.serving import server, transport


def batch_images_per_second(run_dir: Path, images: np.ndarray, precision: str) -> float:
    network = inference.load_model(run_dir, precision=precision)
    pixels = inference.to_tensor(images, next(network.parameters()).device)
    inference.predict_probabilities(network, pixels[:1000])  # warm-up
    start = time.perf_counter()
    inference.predict_probabilities(network, pixels)
    return len(images) / (time.perf_counter() - start)


def single_image_ms(run_dir: Path, images: np.ndarray, count: int, precision: str) -> list[float]:
    network = inference.load_model(run_dir, precision=precision)
    inference.classify(network, images[:1])  # warm-up
    times = []
    for image in images[:count]:
        start = time.perf_counter()
        inference.classify(network, image[None])
        times.append(1000 * (time.perf_counter() - start))
    return times


def request_ms(run_dir: Path, images: np.ndarray, count: int, precision: str) -> list[float]:
    """Milliseconds per POST /predict of one PNG, sequential, against a real server in a thread."""
    app = server.create_app(run_dir, precision=precision)
    listening = socket.create_server(("127.0.0.1", 0))  # a free port, bound before the server starts
    port = listening.getsockname()[1]
    instance = uvicorn.Server(transport.server_config(app, "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    while not instance.started:
        time.sleep(0.05)
    bodies = []
    for image in images[:count]:
        buffer = io.BytesIO()
        PIL.Image.fromarray(255 - image).save(buffer, "PNG")  # a product photo: dark item on white
        bodies.append(buffer.getvalue())
    times = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        client.post("/predict", content=bodies[0], headers={"Content-Type": "image/png"})  # warm-up
        for body in bodies:
            start = time.perf_counter()
            client.post("/predict", content=body, headers={"Content-Type": "image/png"}).raise_for_status()
            times.append(1000 * (time.perf_counter() - start))
    instance.should_exit = True
    thread.join()
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = records.benchmark_parser(__doc__, rounds=1)
    parser.add_argument("run", type=Path)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--precision", action="append", choices=inference.INFERENCE_PRECISIONS, help="repeatable (default: fp32)"
    )
    args = parser.parse_args(argv)
    records.start(args)
    images = fashion.load(progress=False).test_images[: 500 if args.quick else None]
    requests = 5 if args.quick else args.requests
    rows, figures = [], {}
    for precision in args.precision or ["fp32"]:
        batches = batch_images_per_second(args.run, images, precision)
        model = single_image_ms(args.run, images, requests, precision)
        whole = request_ms(args.run, images, requests, precision)
        figures[precision] = {
            "batch_images_per_s": batches,
            "model_ms": {"p50": statistics.median(model), "p99": float(np.percentile(model, 99))},
            "request_ms": {"p50": statistics.median(whole), "p99": float(np.percentile(whole, 99))},
        }
        got = figures[precision]
        rows.append(
            [
                precision,
                f"{batches:,.0f}",
                f"{got['model_ms']['p50']:.2f}",
                f"{got['model_ms']['p99']:.2f}",
                f"{got['request_ms']['p50']:.2f}",
                f"{got['request_ms']['p99']:.2f}",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    return records.publish(
        "inference_speed",
        args,
        records.record(
            "speed",
            f"Inference of {args.run.name}: images/s in batches, one image through the model, one per request",
            figures,
            ["precision", "images/s in batches", "model p50 ms", "model p99 ms", "request p50 ms", "request p99 ms"],
            rows,
        ),
    )


if __name__ == "__main__":
    main()
