"""Host memory of a CPU training step: freed tensors are reused, not handed back to the kernel and faulted in again.

Why: glibc's malloc serves each allocation above its mmap threshold (128 KiB at start, raised as blocks are freed,
at most 32 MiB) with fresh pages from the kernel and gives them back on free, and trims the heap's free top above
128 KiB. A training step allocates and frees the same activations every step, so every step paid the kernel's page
faults again: ~33,000 minor faults (130 MB zeroed) and 80 ms of system time a step at the paper shape (b8 s128,
bf16, AMX host; docs/performance.md). ``reuse_freed_memory`` pins the mmap threshold at its 32 MiB ceiling and
keeps up to 1 GiB of freed heap: the second step onward runs on memory the process already holds. Peak memory is
unchanged (the peak is what a step holds at once); memory between steps stays at that peak instead of falling.

Only on Linux with glibc (``mallopt``); anywhere else a no-op. GPU memory is the CUDA caching allocator's and is
not touched.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
MMAP_THRESHOLD = 32 << 20  # glibc's largest: allocations above it (the (V, H) embedding's fp32 copies) stay mmap'd
TRIM_THRESHOLD = 1 << 30  # freed heap kept before the top is given back


def reuse_freed_memory() -> bool:
    """Set glibc's malloc to keep and reuse freed memory (see the module's docstring). True where it was set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl, or no libc.so.6
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
