"""What one limit-sized image costs `fmnist predict` / the server: CPU seconds and peak memory growth.

usage: python benchmarks/hostile_images.py
Each image is a small file that declares the most pixels fmnist accepts, in the costliest modes, written
by this process; each is decoded and preprocessed in a fresh one, whose peak RSS is reset to its current
RSS just before (Linux: /proc/self/clear_refs), so the figure is what decoding adds.
Target (issue 10): < 300 MB and < 1 s of CPU per image.
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import PIL.Image

from fmnist.data import photos

SIDE = int(photos.MAX_PIXELS**0.5)


def rss_mb(field: str) -> float:
    line = next(row for row in Path("/proc/self/status").read_text().splitlines() if row.startswith(field + ":"))
    return int(line.split()[1]) / 1024


KINDS = {
    "RGBA 4096x4096 PNG": lambda: PIL.Image.new("RGBA", (SIDE, SIDE), (0, 0, 0, 0)),
    "palette 4096x4096 PNG": lambda: PIL.Image.new("P", (SIDE, SIDE)),
    "16-bit 4096x4096 PNG": lambda: PIL.Image.new("I;16", (SIDE, SIDE), 300),
    "1 x 16.7M line PNG": lambda: PIL.Image.new("L", (photos.MAX_PIXELS, 1), 255),
    "48-Mpx JPEG": lambda: PIL.Image.new("RGB", (8000, 6000), (200, 30, 30)),
}


def measure(kind: str, path: Path) -> None:
    raw = path.read_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    before = rss_mb("VmRSS")
    start = time.process_time()
    photos.preprocess(photos.open_image(raw, kind))
    seconds = time.process_time() - start
    grown = rss_mb("VmHWM") - before
    print(f"| {kind} | {len(raw) / 1024:,.0f} KB | {seconds:.2f} s | {grown:.0f} MB |", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        measure(sys.argv[1], Path(sys.argv[2]))
    else:
        print("| image | file | CPU | peak RSS growth |\n|---|---|---|---|", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            for name, make in KINDS.items():
                path = Path(folder) / "image"
                make().save(path, "JPEG" if "JPEG" in name else "PNG")
                subprocess.run([sys.executable, __file__, name, str(path)], check=True)
