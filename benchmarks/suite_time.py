"""The test suite's own duration on this machine: the whole suite, the fast tier (`-m "not slow"`), and the
fast tier as a CPU without AVX-512 runs it (.ci/emulate-cpu avx2), each once, one after the other.

    python benchmarks/suite_time.py [--only suite|fast|fast-avx2 ...] [--quick] [--out FILE]

For each: pytest's own figure (the seconds it states: collection and tests), the wall time, the CPU time of
everything it waited for (user + system; Ray's daemons, started apart, are not counted), the tests passed,
and the slowest tests (`--durations`). Run it in the environment the README's test command installed, on a
machine doing nothing else. --quick: one small test module, a check that this script runs. (--threads and
--rounds are accepted and unused: pytest's configuration sets the workers.)
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from fmnist.results import records

ROOT = Path(__file__).resolve().parents[1]
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=15"]
SELECTIONS = {  # name -> (what it runs, the command)
    "suite": ("the whole suite", PYTEST),
    "fast": ("the fast tier", [*PYTEST, "-m", "not slow"]),
    "fast-avx2": ("the fast tier, AVX2 only", ["bash", ".ci/emulate-cpu", "avx2", *PYTEST[3:], "-m", "not slow"]),
}
QUICK = ("one test module", [*PYTEST, "-n", "0", "tests/test_layers.py"])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(command: list[str]) -> dict:
    """Run one selection; its figures (pytest's summary line and --durations read from its output)."""
    cpu, start = children_cpu(), time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu
    summary = re.search(r"(\d+) passed.* in ([\d.]+)s", done.stdout)
    if done.returncode != 0 or summary is None:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    slowest = re.findall(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)", done.stdout, re.MULTILINE)
    return {
        "passed": int(summary[1]),
        "pytest_seconds": float(summary[2]),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "slowest": [[float(seconds), phase, test] for seconds, phase, test in slowest],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = records.benchmark_parser(__doc__, rounds=1)
    parser.add_argument("--only", nargs="+", choices=list(SELECTIONS), help="these selections (default: all)")
    args = parser.parse_args(argv)
    chosen = {"quick": QUICK} if args.quick else {name: SELECTIONS[name] for name in args.only or SELECTIONS}
    figures, rows = {}, []
    for name, (what, command) in chosen.items():
        figures[name] = measure(command)
        got = figures[name]
        slowest = "; ".join(f"{test.split('::')[-1]} {seconds:.0f} s" for seconds, _, test in got["slowest"][:3])
        rows.append(
            [what, f"{got['passed']}", f"{got['pytest_seconds']:.0f} s", f"{got['cpu_seconds']:.0f} s", slowest]
        )
        print(" | ".join(rows[-1]), flush=True)
    return records.publish(
        "suite_time",
        args,
        records.record(
            "determinism",
            "The test suite's duration: the whole suite, the fast tier, the fast tier held to AVX2",
            figures,
            ["selection", "tests passed", "pytest's time", "CPU time (user + system)", "slowest tests"],
            rows,
            notes=[
                "pytest's time: what pytest states (collection and tests), the figure the suite's target is for",
                "CPU time: of the processes pytest waited for, on every core; Ray's daemons are not counted",
            ],
        ),
    )


if __name__ == "__main__":
    main()
