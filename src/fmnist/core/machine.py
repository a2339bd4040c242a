"""The machine a run trains on: its description (recorded in config.json) and the floating-point and
library modes training sets on it (threads.py has the thread counts)."""

from __future__ import annotations

import ctypes
import os
import platform
import warnings

import torch

from fmnist.core import errors, version
from fmnist.core import threads as cpu_threads


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo: Intel's AMX tiles; AVX-512 BF16 dot products (Zen 4+)


# oneDNN's instruction-set caps (ONEDNN_MAX_CPU_ISA) that leave out the AVX-512 flags, or bf16's: a cap makes
# the libraries compute as on an older CPU (.ci/emulate-cpu), and fmnist's choices follow it.
ISA_CAPS = {
    "SSE41": ("avx", "avx2", "avx512", "amx"),
    "AVX": ("avx2", "avx512", "amx"),
    "AVX2": ("avx512", "amx"),
    "AVX2_VNNI": ("avx512", "amx"),
    "AVX2_VNNI_2": ("avx512", "amx"),
    "AVX512_CORE": ("avx512_bf16", "amx"),
    "AVX512_CORE_VNNI": ("avx512_bf16", "amx"),
    "AVX512_CORE_BF16": ("amx",),
}


def cpu_flags(environ=os.environ) -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo), less those an ONEDNN_MAX_CPU_ISA cap leaves out."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = set(next(line.split(":", 1)[1].split() for line in info if line.startswith("flags")))
    except (OSError, StopIteration):
        return set()
    left_out = ISA_CAPS.get(environ.get("ONEDNN_MAX_CPU_ISA", "").upper(), ())
    return {flag for flag in flags if not flag.startswith(left_out)}


def computes_bf16(device: torch.device, flags: set[str] | None = None) -> bool:
    """Whether the device multiplies bf16 matrices natively: elsewhere bf16 autocast is emulated and slower.
    `flags`: the CPU's feature flags (default: this machine's, from /proc/cpuinfo)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else set(flags)))


def check_bf16(precision: str, device: torch.device, flags: set[str] | None = None) -> bool:
    """Say in one line (a warning) where bf16 is asked for on a device that only emulates it: there it is
    many times slower than fp32, not faster. True where it is native (or not asked for)."""
    if precision != "bf16" or computes_bf16(device, flags):
        return True
    warnings.warn(
        f"fmnist: bf16 asked for, but this {'GPU' if device.type == 'cuda' else 'CPU'} has no native bf16 "
        "(AVX512-BF16 or AMX on a CPU): it is emulated and many times slower than fp32 here; "
        "use --precision fp32",
        stacklevel=3,
    )
    return False


def describe_machine(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    available, why = cpu_threads.available_cpus()
    return {
        "fmnist": version.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "available_cpus": available,
        "cpu_limit": why,
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "mkl_cbwr": cpu_threads.mkl_cnr_branch(),
        "malloc_keeps_freed": FREED_MEMORY_KEPT,
        "native_bf16": computes_bf16(device),
    }


FREED_MEMORY_KEPT = False  # whether `set_cpu_modes` had malloc keep freed memory (config.json records it)


def set_cpu_modes() -> None:
    """The process-wide modes training and benchmarks run in: subnormal floats flushed, freed memory kept.
    Call it before the first parallel torch op creates the OpenMP workers: they inherit the float mode."""
    global FREED_MEMORY_KEPT
    flush_denormals()
    FREED_MEMORY_KEPT = keep_freed_memory()


def flush_denormals() -> None:
    """Treat subnormal floats as zero, as TensorFlow's CPU threads do.

    Squares of tiny gradients in Adam's state become subnormal, and x86 CPUs handle those 10-100x
    slower: measured, a late-training step went from ~26 to ~18 ms. The mode is per thread and new
    threads inherit it.
    """
    torch.set_flush_denormal(True)


HEAP_MMAP_THRESHOLDS = (1 << 30, 32 << 20)  # bytes: the first glibc accepts (some refuse over 32 MB, 64-bit)
HEAP_TRIM_THRESHOLD = 2**31 - 1  # hand the heap's free top back only past 2 GiB (mallopt takes a C int)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter codes (malloc.h)


def keep_freed_memory(libc: str = "libc.so.6") -> bool:
    """Let glibc's malloc reuse freed memory for the next step's tensors and the next epoch's copies of the
    data instead of returning it to the kernel and faulting it back in page by page. Returns whether it
    took (False: not glibc). The process then keeps its peak heap; only blocks over the threshold (1 GB
    where glibc accepts it) still go back when freed.

    Why: a cnn94 bf16 step in a loop took ~500 fresh pages (minor faults) per step, 0.75 ms of kernel
    time on the main thread, under glibc's adaptive thresholds; its epochs, ~80,000 per 20,000 images
    (each shuffled or augmented copy of the images is mmapped afresh). With these, almost none (README,
    "Page faults, and a stricter floor")."""
    try:
        mallopt = ctypes.CDLL(libc).mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows: their allocators, left as they are
        return False
    mapped = any(mallopt(M_MMAP_THRESHOLD, threshold) for threshold in HEAP_MMAP_THRESHOLDS)  # 1: it took
    return mapped and bool(mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD))


def set_up(threads: int | None = None) -> int:
    """Ready this process for work, called where work starts (training, evaluation, serving, benchmarks):
    subnormal floats flushed and freed memory kept (first: torch's worker threads inherit the float mode),
    then the thread count (numba's pool follows it; fewer where nobody chose the count and other programs
    hold CPUs: threads.follow_load); a warning where MKL's reproducible mode was missed. Returns the count
    asked for (threads.chosen_count). OpenMP's waiting and MKL's mode are chosen as `import fmnist` runs, before
    torch loads (threads.py says why)."""
    set_cpu_modes()
    count = cpu_threads.use(threads)
    if cpu_threads.follows_load(threads):  # others' threads hold CPUs now: start on those left free
        cpu_threads.follow_load(count, every=0.0)
    check_reproducible_mode()
    return count


def resolve_device(name: str) -> torch.device:
    """ "auto": a CUDA GPU where there is one, else the CPU; an error where CUDA is asked for and absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise errors.FmnistError("--device cuda asked for, but this machine has no usable CUDA GPU")
    return torch.device(name)


def check_reproducible_mode() -> None:
    """Warn where MKL runs outside its reproducible mode because torch computed before `import fmnist`."""
    if os.environ.get("MKL_CBWR") == cpu_threads.MKL_BRANCH and cpu_threads.mkl_cnr_branch() == "OFF":
        warnings.warn(
            "fmnist: torch ran matrix products before fmnist was imported, so MKL's reproducible mode "
            "is off in this process and its weights may differ from another process's by rounding; "
            "import fmnist before torch (or set MKL_CBWR=AUTO before starting Python)",
            stacklevel=3,
        )
