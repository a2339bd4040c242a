"""CPU threads on a shared machine: how many this process may use, and how its idle threads wait.

Two facts, measured with benchmarks/contention.py (README, "Speed on a shared machine"):
- OpenMP threads spin while they wait for work, then sleep. PyTorch's libgomp spins 300,000 rounds by
  default; when another process holds a core, a parallel region's threads burn their time slices spinning
  at its barriers for one that is not running: a step beside one busy process took 3-4x its quiet time,
  two trainings at once each 4-5x. A short spin (SPIN_SHARED) sleeps soon enough to share. But on a quiet
  machine a thread that sleeps must be woken for the next region, and on some VMs that wake is slow: on
  a Sapphire Rapids VM the short spin made cnn94's quiet step 1.3x slower than SPIN_QUIET. So
  `configure_waiting` looks at the CPUs as fmnist is imported: others' threads runnable then (the median
  of a few reads of /proc/stat, `others_running`) get the short spin, a quiet machine the longer one.
  libgomp reads it when it loads, hence `import fmnist` calls it before fmnist imports torch; a user's
  own GOMP_SPINCOUNT or OMP_WAIT_POLICY wins. numba's kernels run on the same pool: torch loads its libgomp
  into the global symbol scope (libtorch_global_deps), so numba's OpenMP layer, loaded later, binds its
  GOMP_parallel there, not to the system's libgomp it names (seen with LD_DEBUG=bindings, torch 2.13):
  one pool of threads for both, never two contending for the cores.
- PyTorch starts a thread per CPU it sees, but a container's CPU quota (cgroup) can be lower than that:
  `available_cpus` counts the CPUs of the affinity mask, capped by the quota.

And one for "same seed, same weights" in any process (README, "Reproducibility"):
- MKL (PyTorch's CPU matrix products) promises bitwise equal results from run to run only in its
  conditional numerical reproducibility (CNR) mode; outside it, its code path may depend on the
  buffers' alignment and on its threading state. `configure_reproducibility` turns the mode on at
  `import fmnist` (MKL reads MKL_CBWR at its first call and cannot change it after), unless the user
  chose a branch; `mkl_cnr_branch` reads back what MKL runs with, and each run records it.
- `use` always applies the thread count through torch.set_num_threads, which also sets MKL's own
  count and turns its dynamic threading off: a Ray worker starts with OMP_NUM_THREADS=1 and would
  otherwise keep MKL's defaults, unlike the CLI.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
import time
from pathlib import Path

SPIN_SHARED = 1000  # libgomp's spin rounds before a waiting thread sleeps, where others' threads hold the CPUs
SPIN_QUIET = 10000  # ... where none did as fmnist was imported (libgomp's default: 300,000)
MKL_BRANCH = "AUTO"  # MKL's CNR mode on the code path MKL chooses for this CPU (measured: no slower, Zen 5)
MKL_BRANCHES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE"}  # mkl_cbwr_get's codes (mkl_cbwr.h); others: an ISA
CGROUP = Path("/sys/fs/cgroup")
PROC_STAT = Path("/proc/stat")


def others_running(read=PROC_STAT.read_text, reads: int = 40, own=None, every: float = 0.0) -> int:
    """Threads runnable now besides this process's: the median of `reads` back-to-back reads of the kernel's
    procs_running (/proc/stat; `read`: injected, for tests), less this process's own running threads (`own`:
    a count, injected for tests; default read from /proc/self/task, at least this thread); 0 where it cannot
    be read. The median: a daemon's blip is not a neighbour. Back to back by default, not asleep between
    reads: two fmnist processes started together each stay runnable, so each sees the other. `every`: seconds
    between reads, for a reading over a stretch of time (a neighbour is then one that wants a CPU most of it).
    """
    counts = []
    for index in range(reads):
        if every and index:
            time.sleep(every)
        try:
            line = next(line for line in read().splitlines() if line.startswith("procs_running "))
            counts.append(int(line.split()[1]) - (own_running() if own is None else own))
        except (OSError, StopIteration, ValueError, IndexError):
            return 0
    return max(0, sorted(counts)[len(counts) // 2])


def own_running(tasks: Path = Path("/proc/self/task")) -> int:
    """This process's threads that are running or runnable (state R), at least 1: the one asking. Training's
    OpenMP threads spin (runnable) a while after each parallel region; they are not a neighbour."""
    running = 0
    try:
        for task in tasks.iterdir():
            with contextlib.suppress(OSError):  # a thread that ended between the listing and the read
                running += (task / "stat").read_text().rpartition(")")[2].split()[0] == "R"
    except OSError:
        pass
    return max(1, running)


def threads_beside(others: int, cpus: int, chosen: int) -> int:
    """The threads for the next stretch of work: the `chosen` count, or only the CPUs that the other
    runnable threads leave free (at least 1). On 2 cores with one taken, one thread beats two that wait at
    every barrier for the one sharing a core."""
    return max(1, min(chosen, cpus - others))


def follow_load(chosen: int, others: int | None = None, every: float = 0.004) -> int:
    """Re-read the machine (`others`: injected, for tests) and run torch (and numba, which follows it) on
    `threads_beside` threads; training calls it before each epoch where the user did not fix --threads.
    `every`: seconds between the reads of the machine (0: back to back, as at start-up, where a process
    started beside this one is still importing). Returns the count now in use."""
    import torch

    # 25 reads 4 ms apart: on a quiet VM a daemon can hold a CPU for a millisecond, not for most of 0.1 s
    others = others_running(reads=25, every=every) if others is None else others
    count = threads_beside(others, available_cpus()[0], chosen)
    if count != torch.get_num_threads():
        torch.set_num_threads(count)
    return count


def spin_count(others: int, cpus: int, used: int) -> int:
    """SPIN_SHARED where the other runnable threads cannot all run on the CPUs this process leaves free."""
    return SPIN_SHARED if others > cpus - used else SPIN_QUIET


def configure_waiting(environ=os.environ, others: int | None = None) -> str | None:
    """How the OpenMP runtime loaded next (PyTorch's) waits, unless the user chose: `spin_count` for the
    threads runnable now (`others`: injected, for tests). Returns what it set, or None."""
    if "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ:
        return None
    others = others_running() if others is None else others
    environ["GOMP_SPINCOUNT"] = str(spin_count(others, os.cpu_count() or 1, available_cpus()[0]))
    return environ["GOMP_SPINCOUNT"]


def configure_reproducibility(environ=os.environ) -> bool:
    """MKL's reproducible (CNR) mode for the MKL loaded next, unless the user chose MKL_CBWR; True if set."""
    if "MKL_CBWR" in environ:
        return False
    environ["MKL_CBWR"] = MKL_BRANCH
    return True


@functools.cache
def _mkl_cbwr_get():
    """MKL's mkl_cbwr_get inside PyTorch's CPU library (MKL is linked in statically); None where absent."""
    import torch

    try:
        return ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")).mkl_serv_cbwr_get
    except (OSError, AttributeError):  # another build of torch (no MKL, another name): nothing to read
        return None


def mkl_cnr_branch() -> str | None:
    """The CNR branch MKL runs with in this process ("AUTO"; "OFF" where MKL ran before fmnist set it, or
    the user turned it off); None where this torch has no MKL to ask."""
    get = _mkl_cbwr_get()
    if get is None:
        return None
    code = get(1)  # MKL_CBWR_BRANCH
    return MKL_BRANCHES.get(code, f"branch {code}")


def cgroup_quota(root: Path = CGROUP) -> float | None:
    """CPUs' worth of time per period the cgroup allows (v2 cpu.max, v1 cfs quota/period); None: no limit."""
    try:
        if (root / "cpu.max").is_file():
            limit, every = (root / "cpu.max").read_text().split()[:2]
            return None if limit == "max" else int(limit) / int(every)
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus(affinity: set[int] | None = None, quota: float | None = -1.0) -> tuple[int, str]:
    """(threads to use by default, why): the affinity mask's CPUs, capped by the cgroup quota (at least 1).

    Both can be given, for tests; by default they are read from this process and its cgroup.
    """
    if affinity is None:  # Linux's affinity mask; elsewhere every CPU
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    quota = cgroup_quota() if quota == -1.0 else quota
    if quota is not None and quota < len(affinity):
        return max(1, math.floor(quota)), f"cgroup CPU quota of {quota:g} CPUs ({len(affinity)} in the affinity mask)"
    return len(affinity), f"{len(affinity)} CPUs in the affinity mask" + (
        "" if quota is None else f", cgroup quota {quota:g}"
    )


def chosen_count(threads: int | None = None) -> int:
    """The thread count asked for: `threads`, else OMP_NUM_THREADS where set (torchrun sets 1, Ray the task's
    CPUs), else what `available_cpus` allows."""
    import torch

    return threads or (torch.get_num_threads() if "OMP_NUM_THREADS" in os.environ else available_cpus()[0])


def follows_load(threads: int | None = None) -> bool:
    """Whether the count may follow the machine's load: only where nobody chose it (--threads, OMP_NUM_THREADS)."""
    return threads is None and "OMP_NUM_THREADS" not in os.environ


def use(threads: int | None = None) -> int:
    """Set PyTorch's intra-op threads to `chosen_count(threads)`. Returns the count.

    Always through torch.set_num_threads, even when the count is already right: it also fixes MKL's
    count and dynamic threading, so every process (the CLI, a Ray worker, a notebook) runs MKL alike."""
    import torch

    count = chosen_count(threads)
    torch.set_num_threads(count)
    return count
