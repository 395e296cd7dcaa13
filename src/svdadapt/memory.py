"""Handing memory that a finished stage freed back to the operating system."""

from __future__ import annotations

import ctypes
import platform
import sys


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim``); False where unsupported.

    glibc keeps memory freed by torch's CPU allocator in its heaps for reuse, so after a stage that
    allocated and freed a lot (calibration, decompositions) the process holds hundreds of MiB it
    no longer uses. Called once between stages (not in loops: re-faulting trimmed pages costs time).
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)  # returns whether anything was released; either way the call did its job
    return True
