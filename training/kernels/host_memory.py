"""Keep freed host memory inside a CPU training process instead of handing it back.

A training step on CPU allocates and frees the same activations every step: on the
benchmark's tiny Llama, tensors of 4-12 MB (a ``[4096, 256]`` hidden state, a
``[4096, 688]`` MLP activation, the ``[4096, 512]`` logits). glibc's malloc serves blocks
above its mmap threshold with a fresh ``mmap`` and unmaps them on free; below it, it trims
the heap's free top back to the kernel. Either way the next step touches new pages: one
minor page fault and a zeroed 4 KiB page each, ~60,000 faults a step (measured with
``/usr/bin/time -f %R``), ~5-10 % of a CPU step.

:func:`keep_freed_memory` sets the two ``mallopt`` knobs PyTorch's CPU tuning guides set
through jemalloc or tcmalloc instead: the mmap threshold at its largest fixed value
(32 MiB on 64-bit glibc; larger blocks are still mapped) and no trimming. Freed blocks
then stay in the heap and the next step reuses them: faults fall to 8,000-13,000 a step, peak
RSS stays the same (the heap holds one step's high-water mark, which the step needed
anyway). It changes no numbers, only where the memory comes from.

Only on Linux with glibc (``mallopt`` missing, e.g. musl or macOS, leaves malloc as it is),
only for CPU training (``training/trainers/trainer.py``), and not when the user set the same knobs
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``) or preloaded
another allocator (``LD_PRELOAD``): theirs wins.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses a fixed mmap threshold above HEAP_MAX_SIZE / 2: 32 MiB on 64-bit.
MMAP_THRESHOLD = 32 << 20
_NO_TRIM = 2**31 - 1
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks for reuse (see the module docstring).

    Returns:
        True when both settings took effect; False where they do not apply (not Linux, no
        glibc ``mallopt``, or the user configured the allocator themselves).
    """
    if not sys.platform.startswith("linux") or any(os.environ.get(name) for name in _USER_SETTINGS):
        return False
    try:
        # The C library this process already runs on (no library search, no subprocess).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on a value it refuses.
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, _NO_TRIM) == 1
