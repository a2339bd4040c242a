"""machine.py's process modes, each in a fresh process: they change the process for good."""

from __future__ import annotations

import subprocess
import sys
import warnings

import PIL.Image
import pytest
import torch

from fmnist.core import machine
from tests.helpers import run_cli

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


def test_bf16_where_it_is_only_emulated_is_said_in_one_line():
    cpu = torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing said where bf16 is native or not asked for
        assert machine.check_bf16("bf16", cpu, {"avx2", "avx512f", "avx512_bf16"})
        assert machine.check_bf16("bf16", cpu, {"avx2", "amx_bf16"})
        assert machine.check_bf16("fp32", cpu, {"avx2"})
    with pytest.warns(UserWarning, match="no native bf16 .* use --precision fp32") as said:
        assert not machine.check_bf16("bf16", cpu, {"avx2", "fma"})
    assert len(said) == 1 and "\n" not in str(said[0].message)


def test_the_cli_warns_of_emulated_bf16_in_one_line(trained_run, tmp_path, capsys, monkeypatch):
    """predict (and evaluate and serve, which load the model the same way) on a CPU capped to AVX2."""
    image = PIL.Image.new("L", (40, 50), 255)
    image.paste(0, (10, 10, 30, 40))  # something to see: a blank image would add a warning of its own
    image.save(tmp_path / "shirt.png")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # as .ci/emulate-cpu avx2: no bf16 flags left
    code, out, err = run_cli(capsys, "predict", trained_run, tmp_path / "shirt.png", "--precision", "bf16")
    assert code == 0 and "shirt.png:" in out
    assert err.startswith("warning: bf16 asked for, but this CPU has no native bf16") and err.count("\n") == 1
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    code, out, err = run_cli(capsys, "predict", trained_run, tmp_path / "shirt.png", "--precision", "fp32")
    assert code == 0 and err == ""
