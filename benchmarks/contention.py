"""Speed on a shared machine: fmnist's training step and evaluation, quiet and under contention, as ratios.

    python benchmarks/contention.py [--model NAME] [--threads N] [--variant "NAME=VALUE ..." ...] [--serve RUN]

Scenarios, each in fresh processes (OpenMP reads its settings when it loads): quiet; beside one busy
process (a Python busy loop); two fmnist processes at once. Reported: the median ms per training step
(the model's recipe: its batch, optimizer and the precision training chooses) and evaluation images/s,
each as a ratio to quiet. Then a real training (`loop.fit`, the model's recipe, a few short epochs) with a
busy process started as its first epoch ends, so after fmnist chose how to wait: ms per step from epoch 3
on (epoch 2 may have begun before the load), quiet, following the load (the default), and with --threads
fixed (the count never changes). Each --variant runs every scenario again with those variables set (e.g.
"GOMP_SPINCOUNT=300000", libgomp's own default), interleaved, so settings are compared in one sitting.
With --serve RUN: p99 latency of 50 concurrent single-image requests to `fmnist serve RUN`, quiet and
with a training beside it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from fmnist.results import records
from fmnist.training import loop


def worker(threads: int, model: str, quick: bool) -> dict:
    """One measurement in this process: median ms/step over chunks of steps, then evaluation images/s, in
    the precision training would choose here."""
    import torch

    from fmnist.core import machine
    from fmnist.data import fashion
    from fmnist.results import bench  # fmnist first: it sets OpenMP's waiting
    from fmnist.training import configs

    machine.set_up(threads or None)  # as training sets up: without --threads, the CPUs others leave free
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    precision = loop.choose_precision("auto", model, cpu)
    batch = configs.Recipe.for_model(model).batch_size
    x, y = torch.rand(batch, fashion.IMAGE_SIZE, fashion.IMAGE_SIZE, 1), torch.randint(0, fashion.NUM_CLASSES, (batch,))
    step = bench.recipe_step(model, x, y, precision)
    steps, chunks, images, times = (2, 2, 500, 1) if quick else (15, 12, 5000, 3)
    bench.time_steps(step, steps, cpu)  # warm-up: kernels, allocator, thread pool
    step_ms = statistics.median(1000 * bench.time_steps(step, steps, cpu) for _ in range(chunks))
    images = statistics.median(bench.evaluation_throughput(model, images, cpu) for _ in range(times))
    return {"step_ms": step_ms, "eval_images_per_s": images}


MID_RUN = {
    "quiet": "training, quiet",
    "following": "busy process started during training (threads follow)",
    "fixed": "busy process started during training, --threads fixed",
}


def training_worker(model: str, scene: str, quick: bool) -> dict:
    """One real training in this process, a busy process started as its first epoch ends (unless quiet):
    ms per step of each epoch and the threads each trained on."""
    from fmnist.core import threads as cpu_threads
    from fmnist.training import configs

    spinners: list[subprocess.Popen] = []

    def on_epoch(row: dict) -> None:
        if scene != "quiet" and row["epoch"] == 1:
            spinners.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))

    epochs, limit = (3, 1200) if quick else (6, 12_000)
    fixed = cpu_threads.available_cpus()[0] if scene == "fixed" else None
    config = configs.TrainConfig.for_model(model, epochs=epochs, limit=limit, seed=0, threads=fixed)
    try:
        with tempfile.TemporaryDirectory() as folder:
            history = loop.fit(config, f"{folder}/run", on_epoch=on_epoch)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    return {
        "step_ms": [1000 * row["train_seconds"] / row["steps"] for row in history],
        "threads": [row["threads"] for row in history],
    }


def mid_run(args) -> tuple[list[list], dict]:
    """The three trainings, interleaved round by round; ms/step from epoch 3 on, as a ratio to quiet."""
    results: dict[str, list[dict]] = {scene: [] for scene in MID_RUN}
    for _ in range(args.rounds):
        for scene in MID_RUN:
            if args.quick:
                results[scene].append(training_worker(args.model, scene, quick=True))
                continue
            command = [sys.executable, __file__, "--worker", "--scene", scene, "--model", args.model]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[scene].append(json.loads(done.stdout.strip().splitlines()[-1]))
    after = {
        scene: statistics.median(ms for run in runs for ms in run["step_ms"][2:]) for scene, runs in results.items()
    }
    rows = []
    for scene, label in MID_RUN.items():
        threads = " ".join(map(str, results[scene][0]["threads"]))
        ratio = after[scene] / after["quiet"]
        rows.append(
            [args.model, f"{label}; threads by epoch {threads}", f"{after[scene]:.2f}", f"{ratio:.2f}", "–", "–"]
        )
        print(" | ".join(rows[-1]), flush=True)
    return rows, {scene: {"step_ms_from_epoch_3": after[scene], "runs": results[scene]} for scene in MID_RUN}


def measure(env: dict, args, together: int = 1, busy: bool = False) -> list[dict]:
    """Run `together` workers at once (beside a busy loop if `busy`); their results. The quick form measures in
    this process (a fresh one per measurement is what the real figures need: OpenMP reads its settings once)."""
    command = [sys.executable, __file__, "--worker", "--threads", str(args.threads), "--model", args.model]
    command += ["--quick"] if args.quick else []
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if args.quick and not env and together == 1:
            return [worker(args.threads, args.model, quick=True)]
        workers = [
            subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
            for _ in range(together)
        ]
        return [json.loads(w.communicate()[0].strip().splitlines()[-1]) for w in workers]
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()


SCENES = {"quiet": "quiet", "busy": "beside a busy process", "two": "two at once (slower one)"}


def scenarios(variants: dict[str, dict], args) -> tuple[list[list], dict]:
    """Every scenario of every variant, interleaved round by round: drift on the machine affects all alike."""
    results: dict = {(name, scene): [] for name in variants for scene in SCENES}
    for _ in range(args.rounds):
        for name, env in variants.items():
            results[name, "quiet"] += measure(env, args)
            results[name, "busy"] += measure(env, args, busy=True)
            if not args.quick:  # (the quick form: two processes are the same code as one)
                results[name, "two"] += measure(env, args, together=2)
    rows, figures = [], {}
    for name in variants:
        quiet = {key: statistics.median(r[key] for r in results[name, "quiet"]) for key in results[name, "quiet"][0]}
        for scene, label in SCENES.items():
            if not results[name, scene]:
                continue
            step = statistics.median(r["step_ms"] for r in results[name, scene])
            shown = max(r["step_ms"] for r in results[name, scene]) if scene == "two" else step
            images = statistics.median(r["eval_images_per_s"] for r in results[name, scene])
            figures[f"{name}: {scene}"] = {
                "step_ms": shown,
                "eval_images_per_s": images,
                "samples": results[name, scene],
            }
            rows.append(
                [
                    name,
                    label,
                    f"{shown:.2f}",
                    f"{shown / quiet['step_ms']:.2f}",
                    f"{images:,.0f}",
                    f"{quiet['eval_images_per_s'] / images:.2f}",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    return rows, figures


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


def serve_beside_training(run_dir: str, threads: int) -> dict:
    import io

    import httpx
    import PIL.Image

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    buffer = io.BytesIO()
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
        return {"quiet_p99_ms": quiet, "beside_training_p99_ms": busy}
    finally:
        server.kill()


def main(argv: list[str] | None = None) -> dict:
    parser = records.benchmark_parser(__doc__, rounds=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scene", choices=list(MID_RUN), help=argparse.SUPPRESS)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar='"NAME=VALUE ..."',
        help="also run every scenario with these environment variables set (repeatable)",
    )
    parser.add_argument("--model", default="seed-cnn", help="the network and recipe to time (default: seed-cnn)")
    parser.add_argument("--serve", metavar="RUN", help="also measure the server's p99 beside a training")
    args = parser.parse_args(argv)
    args.threads = args.threads or 0  # 0: fmnist's choice, in each worker
    if args.worker:
        measured = (
            training_worker(args.model, args.scene, args.quick)
            if args.scene
            else worker(args.threads, args.model, args.quick)
        )
        print(json.dumps(measured), flush=True)
        return {}
    args.rounds = 1 if args.quick else args.rounds
    variants = {"fmnist's defaults": {}}
    variants.update({text: dict(pair.split("=", 1) for pair in text.split()) for text in args.variant})
    rows, figures = scenarios(variants, args)
    during, figures["during_training"] = mid_run(args)
    rows += during
    if args.serve:
        figures["serve"] = serve_beside_training(args.serve, args.threads)
    return records.publish(
        "contention",
        args,
        records.record(
            "shared-machine",
            f"{args.model} on a shared machine: the training step and evaluation, quiet and under contention",
            figures,
            ["setting", "scenario", "ms/step", "x quiet", "eval images/s", "x quiet"],
            rows,
        ),
    )


if __name__ == "__main__":
    main()
