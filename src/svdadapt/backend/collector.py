"""Python's cyclic garbage collector around imports and at exit.

Importing torch and transformers creates about a million long-lived objects and no garbage; with
the collector on they trigger dozens of full collections, and the interpreter's collections at
exit walk all of them again (what that costs is in docs/performance.md). Reference counting still
frees everything that is not in a cycle.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic collections inside (e.g. while importing); the previous state is restored."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def set_aside_live_objects() -> None:
    """Hide every object alive now from later collections, the interpreter's at exit included
    (``gc.freeze``). For a process's own start and end: frozen garbage is never reclaimed."""
    gc.freeze()
