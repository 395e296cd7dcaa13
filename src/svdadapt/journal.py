"""A pipeline's journal (``OUT/pipeline.json``): what each finished stage was given and what it left,
so that ``svdadapt run RECIPE --resume`` keeps the stages that are done and runs the rest.

A stage is kept when it and every stage before it finished with the same options (those that
change what it makes: not ``--offload`` or ``--resume``) and the same inputs from outside the
pipeline (the local files and folders its options name: a model, a data file, as they were when
the stage began), and what they wrote is as they left it: every file they left has its size and
modification time (cheap for a 70B model; files added since, e.g. an evaluation's results in a
run, do not count). Writing a path in place after its stage finished (``train`` trains the run
``build`` wrote) is part of the later stage's record. The stage running when a run stopped is
recorded too, so an interrupted job is continued only under the options it began with.

The journal also knows which outputs the pipeline created (``made``: each with the identity of what
it created), the only ones it ever removes. Paths inside OUT are kept relative to it (a pipeline
folder moved as a whole keeps its record), others absolute.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_json
from .errors import SvdadaptError

JOURNAL_FILE = "pipeline.json"
FORMAT = "svdadapt-pipeline-1"
INSIDE = "OUT/"  # how a path inside the pipeline's folder is written


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
class Entry:
    name: str
    options: dict[str, Any]  # as recorded: paths inside OUT relative to it
    outputs: dict[str, str]  # what it handed to later stages
    state: dict[str, dict[str, str]]  # listing of every path the stages so far wrote, as this one left them
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)  # listings of what it read from outside


@dataclass
class Journal:
    out: Path  # the pipeline's folder
    stage_paths: set[str] = field(default_factory=set)  # keys of the paths the recipe's stages write
    entries: list[Entry] = field(default_factory=list)
    made: dict[str, str] = field(default_factory=dict)  # key → identity of what the pipeline created there
    running: dict[str, Any] | None = None  # the stage begun and not finished: name, options, inputs
    exists: bool = False  # an earlier run of a pipeline into this OUT left it
    _creating: str | None = None  # the key the running stage may create (nothing was there)
    _known: dict[str, set[str]] = field(default_factory=dict)  # key → files any recorded stage left there

    @property
    def path(self) -> Path:
        return self.out / JOURNAL_FILE

    @classmethod
    def open(cls, out: Path, stage_paths: list[str]) -> Journal:
        journal = cls(out)
        journal.stage_paths = {journal.key(path) for path in stage_paths}
        if not journal.path.is_file():
            return journal
        try:
            payload = json.loads(journal.path.read_text(encoding="utf-8"))
            if payload["format"] != FORMAT:
                raise ValueError
            journal.entries = [Entry(**entry) for entry in payload["stages"]]
            journal.made = payload["made"]
            journal.running = payload.get("running")
            _check(journal)
            journal._learn(journal.entries)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise SvdadaptError(f"{journal.path} is not an svdadapt pipeline journal; give another out=") from None
        journal.exists = True
        return journal

    # ------------------------------------------------------------------ paths and options as recorded
    def key(self, path: str) -> str:
        """``path`` as the journal writes it: relative to OUT when inside it, else absolute (what a
        relative path names depends on the folder the pipeline runs from)."""
        try:
            given = Path(os.path.normpath(Path(path).expanduser().absolute()))
            # the folders above resolved, the last name not: a link put at a stage's output since is
            # that output, told apart by identity (:meth:`owns`), never taken for where it leads
            resolved, root = given.parent.resolve() / given.name, self.out.expanduser().resolve()
        except (OSError, ValueError):
            return path
        return INSIDE + str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)

    def where(self, key: str) -> Path:
        """The path a journal key names."""
        return self.out / key[len(INSIDE) :] if key.startswith(INSIDE) else Path(key).expanduser()

    def record(self, values: dict[str, Any]) -> dict[str, Any]:
        """Option values as the journal holds them: JSON types, paths inside OUT relative to it."""
        plain = json.loads(json.dumps(values, default=str))
        return {k: self.key(v) if isinstance(v, str) and self._names_path(v) else v for k, v in plain.items()}

    def _names_path(self, value: str) -> bool:
        """Whether an option's text names a local file or folder: one that exists, or a stage's output
        (a hub id or a data set's name is kept as written)."""
        return bool(value) and (exists(value) or self.key(value) in self.stage_paths)

    def outside_inputs(self, values: dict[str, Any]) -> dict[str, dict[str, str]]:
        """Listings of the local files and folders the options name (a model, a data file, each of a
        comma-separated list, the path of a ``kind:path`` spec) that no stage of the recipe writes."""
        found: dict[str, dict[str, str]] = {}
        for value in values.values():
            parts = value.split(",") if isinstance(value, str) else []
            for candidate in [c for part in parts for c in (part.strip(), part.partition(":")[2].strip())]:
                if candidate and exists(candidate) and self.key(candidate) not in self.stage_paths:
                    found[self.key(candidate)] = listing(self.where(self.key(candidate)))
        return found

    def began(self, name: str, values: dict[str, Any], path: str) -> dict[str, Any]:
        """The record of stage ``name`` beginning now with these options, writing ``path``."""
        key = self.key(path) if path else ""
        return {"name": name, "path": key, "options": self.record(values), "inputs": self.outside_inputs(values)}

    def outputs(self, index: int) -> dict[str, str]:
        """What finished stage ``index`` handed to later stages, paths inside OUT where OUT is now."""
        return {k: str(self.where(v)) if v.startswith(INSIDE) else v for k, v in self.entries[index].outputs.items()}

    # ------------------------------------------------------------------ what can be kept
    def done(self) -> str:
        """The finished stages, for messages."""
        return f"stages {', '.join(e.name for e in self.entries)} finished" if self.entries else "no stage finished"

    def differs(self, index: int, name: str, values: dict[str, Any]) -> str | None:
        """Why stage ``index`` (0-based) cannot be kept on its options and inputs, or None."""
        if index >= len(self.entries):
            return "it did not finish before"
        entry = self.entries[index]
        if entry.name != name:
            return f"the recipe had {entry.name!r} here before"
        now = self.record(values)
        changed = sorted(k for k in set(now) | set(entry.options) if now.get(k) != entry.options.get(k))
        if changed:
            key = changed[0]
            return f"its options changed ({key}: {entry.options.get(key)!r} → {now.get(key)!r})"
        for key, files in entry.inputs.items():
            if listing(self.where(key)) != files:
                return f"{self.where(key)}, which it read, changed after it began"
        return None

    def changed_output(self, index: int, skips: dict[str, tuple[str, ...]], ignore: str | None) -> str | None:
        """The first path the stages up to ``index`` wrote that is not as stage ``index`` left it
        (a file changed or gone; files added since do not count), or None. ``ignore``: a path the
        stage after it continues from as it is."""
        for key, files in self.entries[index].state.items():
            if key == ignore:
                continue
            now = listing(self.where(key), skips.get(key, ()))
            if any(now.get(name) != mark for name, mark in files.items()):
                return str(self.where(key))
        return None

    def owns(self, key: str) -> bool:
        """Whether what is at ``key`` is what the pipeline created there: inside OUT, by its place (a
        copied or moved pipeline folder stays the pipeline's) while its real path stays inside OUT;
        wherever the real path leaves OUT (elsewhere, or through a link put inside OUT since), only
        while it is the very folder or file created (not one someone else put at that path)."""
        if key not in self.made:
            return False
        real, root = Path(os.path.realpath(self.where(key))), Path(os.path.realpath(self.out))
        return (key.startswith(INSIDE) and real.is_relative_to(root)) or identity(self.where(key)) == self.made[key]

    def forget(self, key: str) -> None:
        """``key`` was removed: nothing there is the pipeline's any more."""
        self.made.pop(key, None)
        self._write()

    def unrecorded(self, key: str, skips: dict[str, tuple[str, ...]]) -> list[str]:
        """Files at ``key`` that no finished stage left there (a note of the user's, say), unless a
        stage writing there was interrupted (its files are its own)."""
        if (self.running or {}).get("path") == key:
            return []
        recorded = self._known.get(key, set())
        return [name for name in listing(self.where(key), skips.get(key, ())) if name not in recorded]

    def _learn(self, entries: list[Entry]) -> None:
        """Remember the files these stages left (also once their records are replaced)."""
        for entry in entries:
            for key, files in entry.state.items():
                self._known.setdefault(key, set()).update(files)

    def wrote_into(self, key: str) -> bool:
        """Whether a stage of an earlier run wrote at ``key`` (recorded in some stage's state)."""
        return any(key in entry.state for entry in self.entries)

    # ------------------------------------------------------------------ writing
    def begin(self, name: str, values: dict[str, Any], path: str | None) -> None:
        """Record the stage about to run, with its inputs as it reads them; ``path``: what it writes,
        the pipeline's own once the stage created it there (nothing, or an empty folder, was there)."""
        self.running = self.began(name, values, path or "")
        key = self.key(path) if path else None
        self._creating = key if key and not holds_something(self.where(key)) else None
        self._write()

    def ended(self) -> None:
        """After the running stage, finished or not: what it created is the pipeline's, and what it
        wrote into of the pipeline's still is (its identity as the stage left it)."""
        key, self._creating = self._creating, None
        running = (self.running or {}).get("path")
        for mine in {key, running if running in self.made else None} - {None, ""}:
            if identity(self.where(mine)) is not None:
                self.made[mine] = identity(self.where(mine))
        self._write()

    def finish(
        self, index: int, outputs: dict[str, str], written: list[str], skips: dict[str, tuple[str, ...]]
    ) -> None:
        """Record stage ``index``, begun with :meth:`begin`, as finished, in place of what the journal
        held from there on (until then an earlier run's record stands: a stage refused before it wrote
        anything loses nothing); ``written``: every path the stages so far wrote."""
        began = self.running or {}
        keys = list(dict.fromkeys(self.key(path) for path in written))
        state = {key: listing(self.where(key), skips.get(key, ())) for key in keys}
        for key in keys:  # rewritten in place or replaced (a new folder): still the pipeline's
            if key in self.made and identity(self.where(key)) is not None:
                self.made[key] = identity(self.where(key))
        del self.entries[index:]
        self.entries.append(Entry(began["name"], began["options"], self.record(outputs), state, began["inputs"]))
        self._learn(self.entries[-1:])
        self.running = None
        self._write()

    def _write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        stages = [asdict(entry) for entry in self.entries]
        write_json(self.path, {"format": FORMAT, "stages": stages, "made": self.made, "running": self.running})


def _check(journal: Journal) -> None:
    """Raise ValueError unless what was read has the journal's shape (a hand edit gone wrong)."""
    strings = lambda d: isinstance(d, dict) and all(isinstance(v, str) for v in d.values())  # noqa: E731
    listings = lambda d: isinstance(d, dict) and all(strings(v) for v in d.values())  # noqa: E731
    for entry in journal.entries:
        if not (isinstance(entry.name, str) and isinstance(entry.options, dict) and strings(entry.outputs)):
            raise ValueError
        if not (listings(entry.state) and listings(entry.inputs)):
            raise ValueError
    if not (isinstance(journal.made, dict) and all(isinstance(v, str) for v in journal.made.values())):
        raise ValueError
    if journal.running is not None and not isinstance(journal.running, dict):
        raise ValueError
