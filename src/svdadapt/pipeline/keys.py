"""How the journal names a path (its key): relative to the pipeline's folder when inside it, so that a
pipeline folder moved or copied as a whole keeps its record, else absolute (what a relative path
names depends on the folder the pipeline runs from)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

INSIDE = "OUT/"  # how a path inside the pipeline's folder is written


@dataclass(frozen=True)
class Keys:
    out: Path  # the pipeline's folder

    def key(self, path: str) -> str:
        """``path`` as the journal writes it."""
        try:
            given = Path(os.path.normpath(Path(path).expanduser().absolute()))
            # the folders above resolved, the last name not: a link put at a stage's output since is
            # that output, told apart by identity (see ownership), never taken for where it leads
            resolved, root = given.parent.resolve() / given.name, self.out.expanduser().resolve()
        except (OSError, ValueError):
            return path
        return INSIDE + str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)

    def where(self, key: str) -> Path:
        """The path a key names."""
        return self.out / key[len(INSIDE) :] if key.startswith(INSIDE) else Path(key).expanduser()

    def real(self, key: str) -> Path:
        """Where what ``key`` names really is (links followed)."""
        return Path(os.path.realpath(self.where(key)))

    def stays_inside(self, key: str) -> bool:
        """Whether ``key`` is inside the pipeline's folder and its real path too (a link put there
        since may lead out of it)."""
        return key.startswith(INSIDE) and self.real(key).is_relative_to(os.path.realpath(self.out))
