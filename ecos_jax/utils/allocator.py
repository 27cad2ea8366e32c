"""glibc malloc settings that keep XLA:CPU's large temporaries in memory between steps.

XLA:CPU allocates each executable's buffers with `malloc`, from its own worker threads. glibc
serves those threads from per-thread arenas, and an arena cannot hold a block larger than its
64 MiB heap, so glibc `mmap`s every such block afresh and `munmap`s it on free. A DP-SGD step at
batch 2048 frees and re-maps a few hundred MB of temporaries this way, and the kernel zero-fills
every 4 KiB page again on first touch: ~57,000 minor page faults per `tramer_cnn` step, a third
of the process's CPU time spent in the kernel (`experiments/train_dp.py`'s `fashion_cnn`: 743 s
system against 1569 s user).

`configure()` sends every thread to the main arena (`M_ARENA_MAX` = 1), which grows with `brk`
and never `mmap`s (`M_MMAP_MAX` = 0), and keeps up to 2 GiB of freed memory at its top
(`M_TRIM_THRESHOLD`) instead of returning it to the kernel, so the next step reuses pages that
are already mapped. On 2 CPU cores at batch 2048 (benchmarks/allocator.py): page faults per
step fall ~20-fold and the steps of the CNNs run 1.3-1.7x faster, the DP and non-private steps
alike. Batches whose temporaries stay under glibc's 32 MiB mmap threshold (batch 256 here) are
unaffected. The cost: freed memory below the 2 GiB trim threshold stays with the process,
and the peak resident set can rise a little (one reading, `cnn` at batch 2048 from a
scratch script: 784 -> 842 MB; benchmarks/allocator.py does not measure it).

Process-wide, and effective only for threads that have not allocated yet, so it must run
before JAX creates its CPU client (the first computation). Every experiment driver calls it
first (`cli.main`), as do the benchmarks (the in-process tests keep glibc's default, see
tests/conftest.py). Library users call it once at
the top of their program:

    >>> from ecos_jax.utils import allocator
    >>> allocator.configure()   # before the first JAX computation

`ECOS_JAX_MALLOC=system` leaves glibc's defaults (for comparison); other platforms and C
libraries are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

TRIM_THRESHOLD = 2**31 - 1   # bytes of freed memory kept at the heap's top (mallopt takes an int)
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD))
ENV = "ECOS_JAX_MALLOC"

_applied: bool | None = None


def supported() -> bool:
    """Whether this process runs on glibc under Linux, where `configure` can apply (changes
    nothing)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def configure() -> bool:
    """Applies `SETTINGS` with glibc's `mallopt` once per process; True if they are in force.

    False (and nothing changed) with `ECOS_JAX_MALLOC=system`, off Linux, or under another C
    library (musl, macOS). Raises RuntimeError if glibc rejects a setting (no partial silence:
    an unexpected C library should be noticed).
    """
    global _applied
    if _applied is not None:
        return _applied
    choice = os.environ.get(ENV, "tuned")
    if choice not in ("tuned", "system"):
        raise ValueError(f"{ENV} must be 'tuned' or 'system', got {choice!r}.")
    if choice == "system" or not supported():
        _applied = False
        return False
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    for param, value in SETTINGS:
        if mallopt(param, value) != 1:
            raise RuntimeError(f"glibc mallopt({param}, {value}) failed.")
    log.debug("glibc malloc: one arena, no mmap, trim threshold %d bytes", TRIM_THRESHOLD)
    _applied = True
    return True
