"""Which outputs the pipeline created: the only ones ``run --resume`` ever removes.

Per journal key, the identity (inode and change time) of what the pipeline created there, as the
last stage writing there left it. What is at a key is the pipeline's while, inside OUT, its real path
stays inside OUT (by its place: a moved or copied pipeline folder keeps its record); wherever its
real path leaves OUT (a path elsewhere, or a link put inside OUT since), only while it is the very
folder or file created, never one someone else put at that path.

Before a stage runs it is decided which outputs it may call the pipeline's once it ends, finished or
not (:meth:`Made.claims`): the one it creates (nothing, or an empty folder, is there), and the
pipeline's outputs it writes into (its own, or one whose folder holds it). Only theirs are recorded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .keys import Keys
from .listing import holds_something


def identity(path: Path) -> str | None:
    """Inode and change time of what ``path`` leads to (None if nothing is there): what the pipeline
    created there, told apart from something put at the same path since (a freed inode is soon
    reused; the change time moves too)."""
    try:
        stat = os.stat(os.path.realpath(path))
    except OSError:
        return None
    return f"{stat.st_ino}:{stat.st_ctime_ns}"


@dataclass
class Made:
    keys: Keys
    identities: dict[str, str] = field(default_factory=dict)  # key → identity of what the pipeline created

    def owns(self, key: str) -> bool:
        """Whether what is at ``key`` is what the pipeline created there (see the module docstring)."""
        if key not in self.identities:
            return False
        return self.keys.stays_inside(key) or identity(self.keys.where(key)) == self.identities[key]

    def claims(self, key: str) -> list[str]:
        """Before a stage writing ``key`` runs: ``key`` if the stage creates it, and the pipeline's
        outputs (owned now) whose real path is or holds ``key``'s."""
        created = [] if holds_something(self.keys.where(key)) else [key]
        real = self.keys.real(key)
        return created + [k for k in self.identities if self.owns(k) and real.is_relative_to(self.keys.real(k))]

    def record(self, keys: list[str]) -> None:
        """What is at ``keys`` now is the pipeline's, as it is now."""
        for key in keys:
            found = identity(self.keys.where(key))
            if found is not None:
                self.identities[key] = found

    def forget(self, key: str) -> None:
        """``key`` was removed: nothing there is the pipeline's any more."""
        self.identities.pop(key, None)
