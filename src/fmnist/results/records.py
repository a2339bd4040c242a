"""Records: every figure fmnist publishes is a self-describing JSON file, written by the command or benchmark
that measured it (`fmnist reproduce`, `fmnist bench`, benchmarks/*.py) and, once published, committed under
results/<machine kind>/. The docs' results pages and the README's headline table are generated from those
files (docs/hooks.py), so each figure is written once.

A record holds what was run (the command, fmnist's commit or version, the date), where (the machine: CPU
model, family and model numbers, the feature flags that decide the speed tier, cores, memory; torch's and the
libraries' versions), what came out (`figures`, and for a table its `columns` and `rows`), and for a ratio
the rounds behind it. The timing side lives here too (`interleaved`, `spread`): one harness for `fmnist
bench` and every benchmark, each variant timed round by round, so that a host's slow spell slows all alike.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from fmnist.core import files, version

SCHEMA = "fmnist-record/1"
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # what decides the speed tier's path
LIBRARIES = ("torch", "numpy", "numba", "onnxruntime", "ray")
# (vendor, family, models) -> the kind a machine's records are filed under (results/<kind>/)
KINDS = (
    ("AuthenticAMD", 25, range(0, 16), "zen3"),
    ("AuthenticAMD", 25, range(16, 128), "zen4"),
    ("AuthenticAMD", 26, range(0, 256), "zen5"),
    ("GenuineIntel", 6, (143, 207), "sapphire-rapids"),
    ("GenuineIntel", 6, (85,), "skylake-sp"),
    ("GenuineIntel", 6, (106, 108), "ice-lake-sp"),
)


def cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        lines = path.read_text().split("\n\n")[0].splitlines()
    except OSError:
        return {}
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines)}


def kind_of(vendor: str, family: int | None, model: int | None) -> str:
    """The machine kind of a CPU (zen4, sapphire-rapids, ...), or vendor-family-model where fmnist knows none."""
    for known_vendor, known_family, models, kind in KINDS:
        if vendor == known_vendor and family == known_family and model in models:
            return kind
    return f"{vendor or platform.machine()}-{family}-{model}".lower()


def machine(environ=os.environ) -> dict:
    """Where a figure was measured: the CPU, the flags that decide the speed tier's path (as the libraries see
    them: an ONEDNN_MAX_CPU_ISA cap takes some away), cores, memory, and the versions of what computed."""
    from fmnist.core import machine as host  # imports torch: only where a record is made

    info = cpuinfo()
    family, model = (int(info[key]) if info.get(key, "").isdigit() else None for key in ("cpu family", "model"))
    memory = next((int(line.split()[1]) for line in _read("/proc/meminfo") if line.startswith("MemTotal:")), 0)
    return {
        "cpu": host.cpu_name(),
        "vendor": info.get("vendor_id", ""),
        "family": family,
        "model": model,
        "kind": kind_of(info.get("vendor_id", ""), family, model),
        "flags": sorted(set(FLAGS) & host.cpu_flags(environ)),
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**20, 1),
        "isa_cap": environ.get("ONEDNN_MAX_CPU_ISA"),
        "python": platform.python_version(),
        "fmnist": version.__version__,
        "libraries": {name: _version(name) for name in LIBRARIES},
    }


def _read(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def commit() -> str | None:
    """fmnist's git commit where it runs from a checkout (short hash, "+" when the tree has changes), else None."""
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def mean_sd(mean: float, sd: float, digits: int = 4) -> str:
    """ "mean ± sd" as every results table prints it; the mean alone where sd is NaN (one seed has no spread)."""
    return f"{mean:.{digits}f}" + ("" if math.isnan(sd) else f" ± {sd:.{digits}f}")


def mean_sd_of(values: list[float], digits: int = 4) -> str:
    """mean_sd of samples (the sample standard deviation)."""
    return mean_sd(statistics.mean(values), statistics.stdev(values) if len(values) > 1 else math.nan, digits)


def record(
    subject: str,
    title: str,
    figures: dict,
    columns: list[str] | None = None,
    rows: list | None = None,
    command: str | None = None,
    rounds: dict | None = None,
    notes: list[str] | None = None,
) -> dict:
    """A record of figures just measured on this machine. `subject`: the results page it belongs to; `columns`
    and `rows`: the table it shows, if any; `rounds`: the samples behind medians and ratios."""
    return {
        "schema": SCHEMA,
        "subject": subject,
        "title": title,
        "command": command or command_line(sys.argv),
        "commit": commit(),
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "figures": figures,
        "columns": columns,
        "rows": rows,
        "rounds": rounds,
        "notes": notes or [],
    }


def command_line(argv: list[str]) -> str:
    """The command that measured, as one would type it again: `fmnist ...` or `python benchmarks/NAME.py ...`,
    without --out (where the record went is not how it was measured)."""
    program = Path(argv[0])
    words = (
        ["fmnist"] if program.name in ("__main__.py", "fmnist") else ["python", f"{program.parent.name}/{program.name}"]
    )
    rest = list(argv[1:])
    while "--out" in rest:
        at = rest.index("--out")
        del rest[at : at + 2]
    return " ".join(words + rest)


def write(path: str | Path, value: dict) -> Path:
    """The record as JSON (atomically); `path` a file, or a directory to hold record.json."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = files.output_dir(path) / "record.json"
    return files.write_json(path, value)


def check(value, where: str = "record") -> dict:
    """A record as read back: the fields the pages need, of the right kinds (ValueError naming what is wrong)."""
    needed = {"schema": str, "subject": str, "title": str, "command": str, "machine": dict, "figures": dict}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: not a JSON object")
    for key, kind in needed.items():
        if not isinstance(value.get(key), kind):
            raise ValueError(f"{where}: {key} must be a {kind.__name__}")
    if not isinstance(value.get("date"), str | None):  # a transcribed figure may not state its day
        raise ValueError(f"{where}: date must be a string or null")
    if value["schema"] != SCHEMA:
        raise ValueError(f"{where}: schema {value['schema']!r}, expected {SCHEMA}")
    if any(len(row) != len(value.get("columns") or []) for row in value.get("rows") or []):
        raise ValueError(f"{where}: a row and the columns differ in length")
    return value


# ---------------------------------------------------------------------------------------------
# The timing harness: interleaved rounds, medians and their spread
def time_calls(call: Callable[[], object], calls: int, synchronize: Callable[[], None] = lambda: None) -> float:
    """Seconds per call over `calls` calls (synchronize: wait for a device before reading the clock)."""
    synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    synchronize()
    return (time.perf_counter() - start) / calls


def interleaved(
    variants: dict[str, Callable[[], object]],
    rounds: int,
    calls: int = 1,
    warmup: int = 1,
    synchronize: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Seconds per call of each variant, `rounds` times, the variants one after another within each round: a
    host's slow spell slows each alike, so the ratios hold where absolute times drift."""
    for variant in variants.values():
        time_calls(variant, warmup, synchronize)  # allocator, kernels, thread pool
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, variant in variants.items():
            samples[name].append(time_calls(variant, calls, synchronize))
    return samples


def spread(samples: list[float]) -> dict:
    """The median of `samples` and their range (what a published timing states beside its median)."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "rounds": len(samples)}


# ---------------------------------------------------------------------------------------------
# A benchmark's command line: the same flags everywhere, the machine set up once, the record written
def benchmark_parser(doc: str | None, rounds: int) -> argparse.ArgumentParser:
    """The flags every benchmark takes (more may be added): --rounds, --threads, --quick, --out."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the CPUs this process may use)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest run that goes through everything: a "
        "check that the benchmark runs (the test suite's), not a measurement",
    )
    parser.add_argument("--out", type=Path, help="where the record goes (default: runs/bench/NAME.json)")
    return parser


def start(args: argparse.Namespace) -> int:
    """The machine set up as training sets it (core/machine.set_up); the thread count."""
    from fmnist.core import machine as host

    return host.set_up(args.threads)


def publish(name: str, args: argparse.Namespace, value: dict) -> dict:
    """Write the record (args.out, else runs/bench/NAME.json), say where, and return it."""
    if args.quick:
        value["notes"] = [*value.get("notes", []), "--quick: a check that the benchmark runs, not a measurement"]
    path = write(args.out or Path("runs") / "bench" / f"{name}.json", value)
    print(f"record: {path}")
    return value
