"""What is on disk at a path, as the journal compares it: a listing of files with their size and
modification time (cheap for a 70B model), and whether anything is there."""

from __future__ import annotations

from pathlib import Path


def listing(path: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{file: "size:mtime_ns"}`` of everything under ``path`` (``{"": ...}`` for a file), without what
    lies under the relative paths in ``skip`` (a run's checkpoints, a later stage's output inside
    it: not part of what made it); ``{}`` if missing."""
    if path.is_file():
        files = {"": path}
    elif path.is_dir():
        files = {str(p.relative_to(path)): p for p in path.rglob("*") if p.is_file()}
        files = {name: p for name, p in files.items() if not any(_under(name, prefix) for prefix in skip)}
    else:
        return {}
    stats = {name: p.stat() for name, p in sorted(files.items())}
    return {name: f"{stat.st_size}:{stat.st_mtime_ns}" for name, stat in stats.items()}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix.rstrip("/") + "/")


def exists(path: str | Path) -> bool:
    """Whether ``path`` names something on disk (False for text too long to be a path)."""
    try:
        return Path(path).expanduser().exists()
    except (OSError, ValueError):
        return False


def holds_something(path: Path) -> bool:
    """Whether ``path`` is a file or a folder with anything in it."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))
