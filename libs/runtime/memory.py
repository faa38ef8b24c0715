"""Keeping a service's resident memory proportional to the data it holds."""

from __future__ import annotations

import ctypes
import logging
import os
import sys

_log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number for the mmap threshold (``malloc.h``)."""

LARGE_BUFFER_BYTES = 512 * 1024
"""Buffers this size or larger (artifact chunks, result pages) get their own mapping."""


def return_large_buffers_to_os(threshold_bytes: int = LARGE_BUFFER_BYTES) -> bool:
    """Make glibc map every buffer of ``threshold_bytes`` or more on its own; True if it applies.

    By default glibc raises its mmap threshold each time a large mapped buffer is freed, after
    which MiB-sized buffers come from the heap of whichever thread allocated them and stay
    resident there when freed. A service moving data through gRPC's threads and
    ``asyncio.to_thread`` workers then grows by megabytes per thread without holding any more
    data: after a warm-up transfer, a 50 MiB artifact round trip grew the registry by 9-17 MiB,
    and by 6-12 MiB (gRPC's in-flight windows and copies) with the threshold fixed. Small
    allocations (every hot-path request) are unaffected. An operator's
    ``MALLOC_MMAP_THRESHOLD_`` (or ``glibc.malloc.mmap_threshold`` in ``GLIBC_TUNABLES``)
    wins; elsewhere than glibc this does nothing.
    """
    operator_set = "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get(
        "GLIBC_TUNABLES", ""
    )
    if operator_set or not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    applied = bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes))
    if not applied:
        _log.warning(
            "could not fix the malloc mmap threshold at %d bytes; "
            "resident memory may keep freed buffers",
            threshold_bytes,
        )
    return applied
