"""Large freed blocks (decoded images above all) go back to the system at once instead of staying in the C heap.

glibc serves a large allocation from its heap once a block that size has been freed (its mmap threshold grows up
to 32 MB), and each thread's heap keeps what it freed: a page server whose sessions each decode one big image
grew by ~200 MB per session and kept it after the sessions closed. A fixed threshold (which also stops it
growing) makes every block from LARGE_BLOCK up a mapping of its own, unmapped when freed.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
LARGE_BLOCK = 8 * 2**20  # below Pillow's 16 MB image blocks, above most tensors a CPU answer allocates per step


def return_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Have this process map (and unmap on free) every allocation of `threshold` bytes or more; False where the C
    library is not glibc (the setting does not exist there)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter itself runs on
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
