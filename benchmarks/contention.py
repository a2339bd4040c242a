"""Speed on a shared machine: fmnist's training step and evaluation, quiet and under contention, as ratios.

usage: python benchmarks/contention.py [--model NAME] [--threads N] [--variant "NAME=VALUE ..." ...] [--serve RUN]

Scenarios, each in fresh processes (OpenMP reads its settings when it loads): quiet; beside one busy
process (a Python busy loop); two fmnist processes at once. Reported: the median ms per training step
(the model's recipe: its batch, optimizer and the precision training chooses) and evaluation images/s,
each as a ratio to quiet. Each --variant runs every scenario again with those variables set (e.g.
"GOMP_SPINCOUNT=300000", libgomp's own default), interleaved, so settings are compared in one sitting.
With --serve RUN: p99 latency of 50 concurrent single-image requests to `fmnist serve RUN`, quiet and
with a training beside it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from fmnist.training import loop


def worker(threads: int, model: str) -> None:
    """One measurement in this process: median ms/step over chunks of steps, then evaluation images/s, in
    the precision training would choose here."""
    import torch

    from fmnist.core import machine
    from fmnist.core import threads as cpu_threads
    from fmnist.data import fashion
    from fmnist.results import bench  # fmnist first: it sets OpenMP's waiting
    from fmnist.training import configs

    machine.set_cpu_modes()
    cpu_threads.use(threads or None)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    precision = loop.choose_precision("auto", model, cpu)
    batch = configs.Recipe.for_model(model).batch_size
    x, y = torch.rand(batch, fashion.IMAGE_SIZE, fashion.IMAGE_SIZE, 1), torch.randint(0, fashion.NUM_CLASSES, (batch,))
    step = bench.recipe_step(model, x, y, precision)
    bench.time_steps(step, 10, cpu)  # warm-up: kernels, allocator, thread pool
    step_ms = statistics.median(1000 * bench.time_steps(step, 15, cpu) for _ in range(12))
    images = statistics.median(bench.evaluation_throughput(model, 5000, cpu) for _ in range(3))
    print(json.dumps({"step_ms": step_ms, "eval_images_per_s": images}), flush=True)


def measure(env: dict, threads: int, model: str, together: int = 1, busy: bool = False) -> list[dict]:
    """Run `together` workers at once (beside a busy loop if `busy`); their results."""
    command = [sys.executable, __file__, "--worker", "--threads", str(threads), "--model", model]
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        workers = [
            subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
            for _ in range(together)
        ]
        return [json.loads(w.communicate()[0].strip().splitlines()[-1]) for w in workers]
    finally:
        if spinner:
            spinner.kill()


def scenarios(variants: dict[str, dict], threads: int, rounds: int, model: str) -> None:
    results = {(name, scene): [] for name in variants for scene in ("quiet", "busy", "two")}
    for _ in range(rounds):  # interleaved: drift on the machine affects every variant alike
        for name, env in variants.items():
            results[name, "quiet"] += measure(env, threads, model)
            results[name, "busy"] += measure(env, threads, model, busy=True)
            results[name, "two"] += measure(env, threads, model, together=2)
    print("| setting | scenario | ms/step | x quiet | eval images/s | x quiet |\n|---|---|---|---|---|---|")
    for name in variants:
        quiet = {key: statistics.median(r[key] for r in results[name, "quiet"]) for key in results[name, "quiet"][0]}
        for scene in ("quiet", "busy", "two"):
            step = statistics.median(r["step_ms"] for r in results[name, scene])
            worst = max(r["step_ms"] for r in results[name, scene]) if scene == "two" else step
            images = statistics.median(r["eval_images_per_s"] for r in results[name, scene])
            label = {"quiet": "quiet", "busy": "beside a busy process", "two": "two at once (slower one)"}[scene]
            shown = worst if scene == "two" else step
            print(
                f"| {name} | {label} | {shown:.2f} | {shown / quiet['step_ms']:.2f} | {images:,.0f} | "
                f"{quiet['eval_images_per_s'] / images:.2f} |"
            )


def p99_ms(url: str, image: bytes, requests: int = 50) -> float:
    import httpx

    def ask(_):
        start = time.perf_counter()
        reply = httpx.post(f"{url}/predict", content=image, headers={"Content-Type": "image/png"}, timeout=120)
        reply.raise_for_status()
        return 1000 * (time.perf_counter() - start)

    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        latencies = sorted(pool.map(ask, range(requests)))
    return latencies[int(0.99 * (len(latencies) - 1))]


def serve_beside_training(run_dir: str, threads: int) -> None:
    import io

    import httpx
    import PIL.Image

    port, buffer = 8765, io.BytesIO()
    PIL.Image.new("L", (200, 260), 255).save(buffer, "PNG")
    server = subprocess.Popen(
        [sys.executable, "-m", "fmnist", "serve", run_dir, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                httpx.get(f"{url}/health").raise_for_status()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        p99_ms(url, buffer.getvalue())  # warm-up
        quiet = statistics.median(p99_ms(url, buffer.getvalue()) for _ in range(5))
        with tempfile.TemporaryDirectory() as folder:
            training = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fmnist",
                    "train",
                    "--epochs",
                    "1000",
                    "--limit",
                    "12000",
                    "--quiet",
                    "--threads",
                    str(threads),
                    "--out",
                    f"{folder}/run",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            training.stdout.readline()  # the model summary: it is training now
            time.sleep(5)
            busy = statistics.median(p99_ms(url, buffer.getvalue()) for _ in range(5))
            training.kill()
            training.wait()
        print(
            f"serve p99, 50 concurrent single-image requests: quiet {quiet:.0f} ms, beside a training "
            f"{busy:.0f} ms ({busy / quiet:.2f}x)"
        )
    finally:
        server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help="threads per process (default: fmnist's choice)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar='"NAME=VALUE ..."',
        help="also run every scenario with these environment variables set (repeatable)",
    )
    parser.add_argument("--model", default="seed-cnn", help="the network and recipe to time (default: seed-cnn)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per scenario (default: 3)")
    parser.add_argument("--serve", metavar="RUN", help="also measure the server's p99 beside a training")
    args = parser.parse_args()
    if args.worker:
        return worker(args.threads, args.model)
    print(subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[7:8] or "")
    variants = {"fmnist's defaults": {}}
    variants.update({text: dict(pair.split("=", 1) for pair in text.split()) for text in args.variant})
    scenarios(variants, args.threads, args.rounds, args.model)
    if args.serve:
        serve_beside_training(args.serve, args.threads)


if __name__ == "__main__":
    main()
