"""Helpers shared by test modules (test modules never import each other): images, a served app, ports,
processes."""
from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import uvicorn

from fmnist import inference, predict, serve


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def running(app, **options):
    """A real uvicorn server with fmnist's settings on a free loopback port, in a thread; yields its URL.

    log_config=None: uvicorn's loggers propagate, so tests read what the server logs (caplog).
    """
    port = free_port()
    instance = uvicorn.Server(serve.server_config(app, "127.0.0.1", port, log_config=None, **options))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not instance.started and time.time() < deadline and thread.is_alive():
        time.sleep(0.05)
    assert instance.started
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=30)


def as_product_photo(item: np.ndarray, size: int = 300) -> PIL.Image.Image:
    """A Fashion-MNIST item as a product photo: dark object, large, on a white page with margins."""
    big = PIL.Image.fromarray(255 - item).resize((size, size), PIL.Image.Resampling.BICUBIC)
    page = PIL.Image.new("L", (size + 160, size + 100), 255)
    page.paste(big, (90, 40))
    return page.convert("RGB")


def confident_correct(trained_run, dataset, count=5):
    network = inference.load_model(trained_run)
    tops = predict.classify(network, dataset.test_images[:200])
    chosen = [i for i, top in enumerate(tops)
              if top[0]["label"] == dataset.test_labels[i] and top[0]["probability"] > 0.9]
    return network, chosen[:count]


def png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims absurd dimensions (a decompression bomb's first bytes)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
            + chunk(b"IEND", b""))


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    """Every process below `root` (Linux /proc): Ray's raylet and its workers are children of the command."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found
