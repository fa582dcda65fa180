"""Keeping freed host memory for reuse when training on the CPU.

On the CPU, torch allocates every tensor with the C library's ``malloc``. glibc's ``malloc`` gives an allocation
above its mmap threshold a fresh mapping, unmapped again when it is freed, and returns free memory at the top of
its heap to the kernel once it exceeds its trim threshold (both adapt: up to 32 MiB and twice the largest freed
mapping). A training step allocates and frees the same activations, log-prob chunks and gradients every step, so
each step gets new pages, which the kernel zeroes on first touch: on the 2-core VM of ``benchmarks/RESULTS.md``
the kernel's page clearing was 22% of all CPU time of a 2-step run of the reasoning-shaped GRPO benchmark
(``perf record``), with 15,000-65,000 page faults and up to 2 s of system time per step. On a GPU, torch's CUDA
caching allocator keeps freed blocks for reuse; ``keep_freed_host_memory`` does the same for host memory with
glibc's own settings (``mallopt``): blocks up to 32 MiB (glibc's largest mmap threshold) come from the heap, and up
to 2 GiB of free heap top stays mapped. Blocks above 32 MiB (a real vocabulary's logit chunks) are still mapped
and unmapped each time, so the peak resident memory stays that of the live tensors.
"""
from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20
"""Bytes: allocations up to this size come from the heap (glibc's largest accepted value on 64-bit systems)."""
TRIM_THRESHOLD = 2**31 - 1
"""Bytes of free memory at the heap's top kept mapped (``mallopt`` takes an ``int``)."""


def keep_freed_host_memory() -> bool:
    """Fix glibc ``malloc``'s mmap and trim thresholds (module docstring) for the rest of the process. Returns
    whether the C library took them: False where it has no ``mallopt`` (not glibc), which then runs as before."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
