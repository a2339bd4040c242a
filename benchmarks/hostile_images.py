"""What one limit-sized image costs `fmnist predict` / the server: CPU seconds and peak memory growth.

    python benchmarks/hostile_images.py [--quick] [--out FILE]

Each image is a small file that declares the most pixels fmnist accepts, in the costliest modes, written
by this process; each is decoded and preprocessed in a fresh one, whose peak RSS is reset to its current
RSS just before (Linux: /proc/self/clear_refs), so the figure is what decoding adds.
Target: < 300 MB and < 1 s of CPU per image.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import PIL.Image

from fmnist.data import photos
from fmnist.results import records

SIDE = int(photos.MAX_PIXELS**0.5)
KINDS = {
    "RGBA 4096x4096 PNG": lambda: PIL.Image.new("RGBA", (SIDE, SIDE), (0, 0, 0, 0)),
    "palette 4096x4096 PNG": lambda: PIL.Image.new("P", (SIDE, SIDE)),
    "16-bit 4096x4096 PNG": lambda: PIL.Image.new("I;16", (SIDE, SIDE), 300),
    "1 x 16.7M line PNG": lambda: PIL.Image.new("L", (photos.MAX_PIXELS, 1), 255),
    "48-Mpx JPEG": lambda: PIL.Image.new("RGB", (8000, 6000), (200, 30, 30)),
}


def rss_mb(field: str) -> float:
    line = next(row for row in Path("/proc/self/status").read_text().splitlines() if row.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def measure(kind: str, path: Path) -> dict:
    """In the fresh process: decode and preprocess one file, print its cost as JSON."""
    raw = path.read_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    before = rss_mb("VmRSS")
    start = time.process_time()
    photos.preprocess(photos.open_image(raw, kind))
    cost = {"kb": len(raw) / 1024, "cpu_s": time.process_time() - start, "rss_mb": rss_mb("VmHWM") - before}
    print(json.dumps(cost), flush=True)
    return cost


def main(argv: list[str] | None = None) -> dict:
    args = records.benchmark_parser(__doc__, rounds=1).parse_args(argv)
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for name, make in list(KINDS.items())[1:2] if args.quick else KINDS.items():
            path = Path(folder) / "image"
            make().save(path, "JPEG" if "JPEG" in name else "PNG")
            done = subprocess.run(
                [sys.executable, __file__, "--measure", name, str(path)], check=True, capture_output=True, text=True
            )
            cost = json.loads(done.stdout.splitlines()[-1])
            figures[name] = cost
            rows.append([name, f"{cost['kb']:,.0f} KB", f"{cost['cpu_s']:.2f} s", f"{cost['rss_mb']:.0f} MB"])
            print(" | ".join(rows[-1]), flush=True)
    return records.publish(
        "hostile_images",
        args,
        records.record(
            "reliability",
            "What one limit-sized image costs: CPU seconds and peak memory growth",
            figures,
            ["image", "file", "CPU", "peak RSS growth"],
            rows,
        ),
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        measure(sys.argv[2], Path(sys.argv[3]))
    else:
        main()
