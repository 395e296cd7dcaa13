"""Removing an output the pipeline created: where a link leads (the link kept), moved aside first so
that a run killed meanwhile leaves no half of it, only an aside the next run clears."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path


def remove(path: Path) -> None:
    """Remove ``path`` (where a link leads, the link kept)."""
    path = Path(os.path.realpath(path))
    aside = _aside(path)
    _delete(aside)
    path.rename(aside)
    _delete(aside)


def remove_leftovers(paths: Iterable[Path]) -> None:
    """What a run killed while it removed one of these left aside."""
    for path in paths:
        _delete(_aside(Path(os.path.realpath(path))))


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.stale")


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
