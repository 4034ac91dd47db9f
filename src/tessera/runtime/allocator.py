"""Keep large numpy temporaries on the heap instead of in fresh mmaps (glibc malloc).

Why: glibc's malloc serves every request of at least ``M_MMAP_THRESHOLD``
(128 KiB to start with) with its own ``mmap`` and hands it back with ``munmap``
on ``free``, and returns the top of the heap to the kernel whenever more than
``M_TRIM_THRESHOLD`` is free there. numpy makes a new array for every
temporary, so numeric code that handles a model-sized vector (a 93,608-word
update is 750 KB of float64) maps, page-faults and unmaps its scratch memory
on every call: the kernel zero-fills each 4 KiB page again, which costs more
than the arithmetic. In ``benchmarks/secure_rounds.py`` that was most of a
contributor's clip and encode time (1.35 ms and 1.8 ms with the defaults,
0.17 ms and 0.58 ms with the environment settings below).

``tune_allocator`` raises, for this process, the mmap threshold to 64 MiB, the
trim threshold to 256 MiB and the top pad (extra heap grown on each ``sbrk``)
to 64 MiB, so such arrays are carved from the heap and reused warm. It does
from inside the process what ``MALLOC_MMAP_THRESHOLD_=67108864
MALLOC_TRIM_THRESHOLD_=268435456 MALLOC_TOP_PAD_=67108864`` does from its
environment, which must be set before the process starts.

The trade-off is memory: freed memory is kept in the process, not returned
to the kernel, while the free top of the heap stays under 256 MiB (resident
memory stays at its high-water mark up to that much); the heap can also
fragment, since blocks under 64 MiB no longer get their own mappings; and
setting the threshold turns off glibc's own adaptive threshold. Blocks of
64 MiB and more are still mmapped and returned at once. The settings are
process-wide and apply to memory allocated afterwards.

Only glibc on Linux has these knobs: anywhere else (macOS, Windows, musl) and
when ``mallopt`` refuses a setting, ``tune_allocator`` changes nothing it can
avoid and returns False. Under a malloc replaced with ``LD_PRELOAD``
(jemalloc, tcmalloc) the call reaches glibc's unused malloc and has no effect.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading

__all__ = ["MMAP_THRESHOLD", "TOP_PAD", "TRIM_THRESHOLD", "tune_allocator"]

MMAP_THRESHOLD = 64 << 20
"""Requests from this size up still get their own mmap (``M_MMAP_THRESHOLD``)."""
TRIM_THRESHOLD = 256 << 20
"""Free memory at the top of the heap kept before it is returned (``M_TRIM_THRESHOLD``)."""
TOP_PAD = 64 << 20
"""Extra heap obtained each time it grows (``M_TOP_PAD``)."""

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
# mallopt(3) gives DEFAULT_MMAP_THRESHOLD_MAX, 32 MiB on 64-bit, as the upper limit
# of M_MMAP_THRESHOLD; older glibc releases refuse more (2.36 accepts 64 MiB).
_DOCUMENTED_MMAP_MAX = 32 << 20

_lock = threading.Lock()


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module docstring).

    Returns True if every setting took effect (the mmap threshold falls back
    to 32 MiB where glibc refuses 64 MiB), False on a platform without glibc
    or if ``mallopt`` refused. Idempotent and thread-safe: the first call
    decides, later calls return its result and change nothing.
    """
    with _lock:
        return _tune()


@functools.cache
def _tune() -> bool:
    if not sys.platform.startswith("linux") or not _is_glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own malloc, glibc's here
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int

    def set_option(param: int, value: int) -> bool:
        return bool(mallopt(param, value) == 1)  # mallopt returns 1 on success, 0 on error

    mmap_ok = set_option(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) or set_option(
        _M_MMAP_THRESHOLD, _DOCUMENTED_MMAP_MAX
    )
    trim_ok = set_option(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    pad_ok = set_option(_M_TOP_PAD, TOP_PAD)
    return mmap_ok and trim_ok and pad_ok


def _is_glibc() -> bool:
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):
        return False
    return bool(version) and str(version).startswith("glibc")
