"""CPU settings for long runs of 3D networks."""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks of up to 1 GiB for reuse instead of returning them to the
    system (and faulting them in again) on every iteration. 3D activations are hundreds of MB, so
    this makes CPU training about 1.5x faster (measured on the tiny preset). Returns False where
    it does not apply (not Linux/glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 31))
    except (OSError, AttributeError):
        return False
