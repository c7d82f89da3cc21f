"""Give freed activation memory back to the system during training (Linux, glibc; issue 18).

glibc serves a large ``malloc`` with its own ``mmap`` (returned to the system on ``free``) only above a threshold
that starts at 128 KiB and RISES to the size of every such block freed (up to 32 MiB). After the first training
step has freed its activations (~1 MiB each for a 500-token packed row of SmolLM2), later activations of that
size come from the heap, which keeps what is freed into it: the process's RSS stays near the last step's
high-water mark between steps and creeps up from step to step (measured on the
packed SFT path: 2,496 -> 2,620 MB over 3 steps; 3.8 GB after a 1,000-example epoch). Fixing the threshold at
256 KiB keeps every activation-sized block on its own mapping, so RSS follows the memory really in use: the
same steps peaked 2,207 -> 2,291 MB (benchmarks/README.md, "SFT memory"). The cost is page faults on fresh
mappings (measured side by side there). The computation is untouched: same numbers, bit for bit.

Left alone when the user set ``MALLOC_MMAP_THRESHOLD_`` (glibc's own variable) or ``PEFTKIT_MALLOC=glibc``, and on
systems without glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc malloc.h
THRESHOLD_BYTES = 256 * 1024
OPT_OUT = "PEFTKIT_MALLOC"  # "glibc": keep glibc's own (dynamic) threshold


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold at 256 KiB for this process. Returns whether it was set."""
    if sys.platform != "linux" or os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get(OPT_OUT) == "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES))
    except (OSError, AttributeError):  # musl and other libcs: no glibc mallopt
        return False
