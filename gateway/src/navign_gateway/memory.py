"""Giving freed heap back to the system (a Pi has little RAM and the gateway runs for months).

A full sync parses a large response into many short-lived objects; CPython frees them, but
glibc's allocator keeps the pages, so the process's resident memory stays at its peak.
``malloc_trim(0)`` returns free pages at the top and inside the heap. Elsewhere (musl, macOS)
it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

_libc: ctypes.CDLL | None = None
_looked = False


def _malloc_trim() -> ctypes.CDLL | None:
    global _libc, _looked
    if not _looked:
        _looked = True
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            _libc = libc if libc is not None and hasattr(libc, "malloc_trim") else None
        except OSError:
            _libc = None
    return _libc


def release_memory() -> bool:
    """Collect garbage, then hand free heap pages back to the system; True if trimmed."""
    gc.collect()
    libc = _malloc_trim()
    if libc is None:
        return False
    try:
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
