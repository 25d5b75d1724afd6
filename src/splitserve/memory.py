"""Keep freed tensor memory in the process instead of handing it back to the kernel at once.

glibc serves every allocation over its mmap threshold (128 KiB to 32 MiB, adapting) with
a fresh mmap and gives it back with munmap on free. A CPU inference loop allocates and
frees tensors of several MB per batch, so each batch page-faults its memory in again:
`splitserve eval` spent as much time in the kernel as in user code (50 s of system time
for 60 s of user time on 100 frames with every baseline). Serving large blocks from the
heap and trimming it rarely makes that ~1.8x faster. Only the commands that run long
tensor loops call this; it does nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Large blocks from the heap (no mmap), returned to the kernel only above ``trim_threshold``."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
