"""machine.py's process modes, each in a fresh process: they change the process for good."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fmnist.core import machine

# Three 8 MiB arrays made and freed, five times: more freed at once than glibc's adaptive trim threshold
# (twice the largest block freed so far) keeps, so by default the heap's top goes back to the kernel each
# time and comes back as fresh pages (minor faults).
CYCLES = """
import resource, sys, numpy as np
from fmnist.core import machine
kept = machine.keep_freed_memory() if sys.argv[1] == "keep" else None
def cycle():
    arrays = [np.ones(1 << 20) for _ in range(3)]
    del arrays
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_freed_memory_is_reused_without_page_faults():
    result = subprocess.run([sys.executable, "-c", CYCLES, "keep"], capture_output=True, text=True)
    kept, faults = result.stdout.split()
    if kept == "False":
        pytest.skip("not glibc's malloc: fmnist leaves this allocator as it is")
    pages = 5 * 3 * (8 << 20) // 4096
    assert int(faults) < pages // 100, f"{faults} page faults for {pages} pages reused"


def test_an_instruction_set_cap_takes_its_flags_away():
    """ONEDNN_MAX_CPU_ISA (.ci/emulate-cpu) makes the libraries compute as an older CPU does: fmnist's own
    choices (native bf16, the speed tier's recipe) follow it."""
    flags = machine.cpu_flags({})
    capped = machine.cpu_flags({"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert capped <= flags and not any(flag.startswith(("avx512", "amx")) for flag in capped)
    assert ("avx2" in capped) == ("avx2" in flags)
    assert not set(machine.NATIVE_BF16_FLAGS) & machine.cpu_flags({"ONEDNN_MAX_CPU_ISA": "avx512_core"})
    assert machine.cpu_flags({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}) == flags  # not a cap below this CPU
