"""Inference speed of a run, as its users meet it: test images/s in batches (evaluation), one image at a
time through the model (the model's part of a request), and one image per request through a real
`fmnist serve` server on loopback (sequential requests, so the figure is latency, not throughput).

    python benchmarks/inference_speed.py RUN [--requests 200] [--precision fp32 --precision bf16]
"""

from __future__ import annotations

import argparse
import io
import statistics
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import PIL.Image
import uvicorn

import fmnist  # noqa: F401  (first: it sets how OpenMP threads wait, before torch loads)
from fmnist.core import machine, threads
from fmnist.data import fashion
from fmnist.nets import inference
from fmnist.serving import server


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
    instance = uvicorn.Server(server.server_config(app, "127.0.0.1", 8765, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    while not instance.started:
        time.sleep(0.05)
    bodies = []
    for image in images[:count]:
        buffer = io.BytesIO()
        PIL.Image.fromarray(255 - image).save(buffer, "PNG")  # a product photo: dark item on white
        bodies.append(buffer.getvalue())
    times = []
    with httpx.Client(base_url="http://127.0.0.1:8765") as client:
        client.post("/predict", content=bodies[0], headers={"Content-Type": "image/png"})  # warm-up
        for body in bodies:
            start = time.perf_counter()
            assert client.post("/predict", content=body, headers={"Content-Type": "image/png"}).status_code == 200
            times.append(1000 * (time.perf_counter() - start))
    instance.should_exit = True
    thread.join()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--precision", action="append", choices=inference.INFERENCE_PRECISIONS, help="repeatable (default: fp32)"
    )
    args = parser.parse_args()
    machine.set_cpu_modes()
    threads.use(args.threads)
    images = fashion.load(progress=False).test_images
    print(f"{args.run}: {machine.describe_machine(machine.resolve_device('cpu'))['device_name']}")
    for precision in args.precision or ["fp32"]:
        print(f"{precision}: test set in batches: {batch_images_per_second(args.run, images, precision):,.0f} images/s")
        model = single_image_ms(args.run, images, args.requests, precision)
        print(
            f"{precision}: one image, the model's part: p50 {statistics.median(model):.2f} ms, "
            f"p99 {np.percentile(model, 99):.2f} ms"
        )
        whole = request_ms(args.run, images, args.requests, precision)
        print(
            f"{precision}: one image per request through fmnist serve: p50 {statistics.median(whole):.2f} ms, "
            f"p99 {np.percentile(whole, 99):.2f} ms"
        )


if __name__ == "__main__":
    main()
