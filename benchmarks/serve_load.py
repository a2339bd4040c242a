"""`fmnist serve` under load, on loopback: throughput, p50/p99 and refusals at several concurrencies, with
idle or half-open connections held alongside; the server's peak RSS.

    python benchmarks/serve_load.py RUN [--levels 1 10 50 200 1000] [--half-open 1000] [--requests 2000]

Each request is one test-set image (a 28x28 PNG) on a connection of its own, as a browser or a script
without keep-alive sends it. The client is asyncio streams (cheap enough to share two cores with the
server). Everything is bounded: at most --requests requests per level, each level at most --deadline
seconds, and the half-open connections (a request line and one header, never finished) are closed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image

from fmnist.results import records


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_image_png() -> bytes:
    import fmnist

    image = fmnist.load_data(show_progress=False).test_images[0]
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def start_server(run: Path, port: int, extra: list[str]) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "fmnist", "serve", str(run), "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                if b" 200 " in s.recv(100):
                    return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not come up")


async def one_request(port: int, body: bytes, timeout: float) -> tuple[int, float]:
    """(status, seconds) of one POST /predict on a new connection; status 0: the connection failed."""
    start = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        head = (
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        writer.write(head + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        await asyncio.wait_for(reader.read(), timeout)  # the body, to the close
        writer.close()
        status = int(status_line.split()[1]) if status_line else 0
    except (TimeoutError, OSError, IndexError, ValueError):
        status = 0
    return status, time.perf_counter() - start


async def level(port: int, body: bytes, concurrency: int, requests: int, deadline: float) -> dict:
    """`requests` requests, `concurrency` in flight at a time."""
    results: list[tuple[int, float]] = []
    todo = iter(range(requests))
    end = time.monotonic() + deadline

    async def client():
        for _ in todo:
            if time.monotonic() > end:
                return
            results.append(await one_request(port, body, timeout=max(1.0, end - time.monotonic())))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ok = np.array([seconds for status, seconds in results if status == 200])
    statuses = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "ok": len(ok),
        "statuses": statuses,
        "ok_per_second": len(ok) / wall,
        "p50_ms": float(np.percentile(ok, 50) * 1e3) if len(ok) else None,
        "p99_ms": float(np.percentile(ok, 99) * 1e3) if len(ok) else None,
        "seconds": wall,
    }


async def hold_half_open(port: int, count: int) -> list:
    """`count` connections that send a request line and one header, then nothing (until closed)."""
    writers = []
    for _ in range(count):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            writers.append(writer)
        except OSError:
            break
    return writers


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """The process's peak (VmHWM) or current (VmRSS) resident memory."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main_async(args) -> dict:
    body = test_image_png()
    port = free_port()
    server = start_server(args.run, port, args.server_args)
    try:
        report = {"levels": [], "half_open_levels": []}
        for concurrency in args.levels:
            report["levels"].append(
                await level(port, body, concurrency, max(args.requests, concurrency), args.deadline)
            )
        report["rss_before_half_open_mb"] = rss_mb(server.pid, "VmRSS")
        held = await hold_half_open(port, args.half_open)
        report["half_open_held"] = len(held)
        await level(port, body, 1, 1, args.deadline)  # served after the loop took the connections in
        report["rss_with_half_open_mb"] = rss_mb(server.pid, "VmRSS")
        for concurrency in args.levels:
            report["half_open_levels"].append(
                await level(port, body, concurrency, max(args.requests, concurrency), args.deadline)
            )
        for writer in held:
            writer.close()
        report["server_alive"] = server.poll() is None
        report["peak_rss_mb"] = rss_mb(server.pid)
        return report
    finally:
        server.terminate()
        server.wait(timeout=60)


def row(r: dict, half_open: int) -> list:
    other = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()) if k != 200) or "–"
    shown = ["–" if r[key] is None else f"{r[key]:.0f}" for key in ("p50_ms", "p99_ms")]
    return [half_open, r["concurrency"], r["requests"], r["ok"], other, f"{r['ok_per_second']:.0f}", *shown]


def main(argv: list[str] | None = None) -> dict:
    parser = records.benchmark_parser(__doc__, rounds=1)
    parser.add_argument("run", type=Path)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 10, 50, 200, 1000])
    parser.add_argument("--half-open", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000, help="requests per level (at least its concurrency)")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds per level at most")
    parser.add_argument("--server-args", nargs=argparse.REMAINDER, default=[], help="passed to fmnist serve")
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.half_open, args.requests = [1, 4], 4, 8
    report = asyncio.run(main_async(args))
    rows = [row(r, 0) for r in report["levels"]] + [
        row(r, report["half_open_held"]) for r in report["half_open_levels"]
    ]
    for line in rows:
        print(" | ".join(map(str, line)))
    print(
        f"server alive: {report['server_alive']}; peak RSS {report['peak_rss_mb']:.0f} MB; RSS "
        f"{report['rss_before_half_open_mb']:.0f} MB before the half-open connections, "
        f"{report['rss_with_half_open_mb']:.0f} MB with them"
    )
    return records.publish(
        "serve_load",
        args,
        records.record(
            "serving",
            "fmnist serve under load on loopback: one image per connection, then with half-open connections held",
            report,
            ["half-open held", "concurrent", "requests", "200", "other statuses", "served/s", "p50 ms", "p99 ms"],
            rows,
        ),
    )


if __name__ == "__main__":
    main()
