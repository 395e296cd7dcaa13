"""A pipeline's journal (``OUT/pipeline.json``): what each finished stage was given and what it left,
so that ``svdadapt run RECIPE --resume`` keeps the stages that are done and runs the rest.

A stage is kept when it and every stage before it finished with the same options (those that
change what it makes: not ``--offload`` or ``--resume``) and the same inputs from outside the
pipeline (the local files and folders its options name: a model, a data file, as they were when
the stage began), and what they wrote is as they left it: every file they left has its size and
modification time (:mod:`.listing`; files added since, e.g. an evaluation's results in a run, do
not count). Writing a path in place after its stage finished (``train`` trains the run ``build``
wrote) is part of the later stage's record. The stage running when a run stopped is recorded too,
so an interrupted job is continued only under the options it began with.

The journal also records which outputs the pipeline created (:mod:`.ownership`), the only ones it
ever removes. Paths are recorded by their keys (:mod:`.keys`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..errors import SvdadaptError
from .keys import Keys
from .listing import exists, listing
from .ownership import Made

JOURNAL_FILE = "pipeline.json"
FORMAT = "svdadapt-pipeline-1"


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
    entries: list[Entry] = field(default_factory=list)
    running: dict[str, Any] | None = None  # the stage begun and not finished: name, options, inputs
    exists: bool = False  # an earlier run of a pipeline into this OUT left it
    skips: dict[str, tuple[str, ...]] = field(default_factory=dict)  # each output's key → what in it is not its own
    _claimed: list[str] = field(default_factory=list)  # what the running stage may call the pipeline's
    _known: dict[str, set[str]] = field(default_factory=dict)  # key → files any recorded stage left there

    def __post_init__(self) -> None:
        self.keys = Keys(self.out)
        self.made = Made(self.keys)

    @property
    def path(self) -> Path:
        return self.out / JOURNAL_FILE

    @classmethod
    def open(cls, out: Path, outputs: Iterable[tuple[str, tuple[str, ...]]]) -> Journal:
        """The journal in ``out``; ``outputs``: each path the recipe's stages write, with the folders
        in it its command calls scratch."""
        journal = cls(out)
        journal.skips = _skips(journal.keys, outputs)
        if not journal.path.is_file():
            return journal
        try:
            payload = json.loads(journal.path.read_text(encoding="utf-8"))
            if payload["format"] != FORMAT:
                raise ValueError
            journal.entries = [Entry(**entry) for entry in payload["stages"]]
            journal.made.identities = payload["made"]
            journal.running = payload.get("running")
            _check(journal)
            journal._learn(journal.entries)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise SvdadaptError(f"{journal.path} is not an svdadapt pipeline journal; give another out=") from None
        journal.exists = True
        return journal

    # ------------------------------------------------------------------ paths and options as recorded
    def key(self, path: str) -> str:
        return self.keys.key(path)

    def where(self, key: str) -> Path:
        return self.keys.where(key)

    def record(self, values: dict[str, Any]) -> dict[str, Any]:
        """Option values as the journal holds them: JSON types, paths inside OUT relative to it."""
        plain = json.loads(json.dumps(values, default=str))
        return {k: self.key(v) if isinstance(v, str) and self._names_path(v) else v for k, v in plain.items()}

    def _names_path(self, value: str) -> bool:
        """Whether an option's text names a local file or folder: one that exists, or a stage's output
        (a hub id or a data set's name is kept as written)."""
        return bool(value) and (exists(value) or self.key(value) in self.skips)

    def outside_inputs(self, values: dict[str, Any]) -> dict[str, dict[str, str]]:
        """Listings of the local files and folders the options name (a model, a data file, each of a
        comma-separated list, the path of a ``kind:path`` spec) that no stage of the recipe writes."""
        found: dict[str, dict[str, str]] = {}
        for value in values.values():
            parts = value.split(",") if isinstance(value, str) else []
            for candidate in [c for part in parts for c in (part.strip(), part.partition(":")[2].strip())]:
                if candidate and exists(candidate) and self.key(candidate) not in self.skips:
                    found[self.key(candidate)] = listing(self.where(self.key(candidate)))
        return found

    def began(self, name: str, values: dict[str, Any], path: str) -> dict[str, Any]:
        """The record of stage ``name`` beginning now with these options, writing ``path``."""
        key = self.key(path) if path else ""
        return {"name": name, "path": key, "options": self.record(values), "inputs": self.outside_inputs(values)}

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

    def changed_output(self, index: int, ignore: str | None) -> str | None:
        """The first path the stages up to ``index`` wrote that is not as stage ``index`` left it
        (a file changed or gone; files added since do not count), or None. ``ignore``: a path the
        stage after it continues from as it is."""
        for key, files in self.entries[index].state.items():
            if key == ignore:
                continue
            now = listing(self.where(key), self.skips.get(key, ()))
            if any(now.get(name) != mark for name, mark in files.items()):
                return str(self.where(key))
        return None

    def unrecorded(self, key: str) -> list[str]:
        """Files at ``key`` that no finished stage left there (a note of the user's, say), unless a
        stage writing there was interrupted (its files are its own)."""
        if (self.running or {}).get("path") == key:
            return []
        recorded = self._known.get(key, set())
        return [name for name in listing(self.where(key), self.skips.get(key, ())) if name not in recorded]

    def _learn(self, entries: list[Entry]) -> None:
        """Remember the files these stages left (also once their records are replaced)."""
        for entry in entries:
            for key, files in entry.state.items():
                self._known.setdefault(key, set()).update(files)

    def wrote_into(self, key: str) -> bool:
        """Whether a stage of an earlier run wrote at ``key`` (recorded in some stage's state)."""
        return any(key in entry.state for entry in self.entries)

    # ------------------------------------------------------------------ writing
    def begin(self, name: str, values: dict[str, Any], path: str) -> None:
        """Record the stage about to run, with its inputs as it reads them; ``path``: what it writes.
        What it may call the pipeline's once it ends is decided now (:meth:`Made.claims`)."""
        self.running = self.began(name, values, path)
        self._claimed = self.made.claims(self.key(path)) if path else []
        self._write()

    def ended(self) -> None:
        """After the running stage, finished or not: what it claimed is the pipeline's, as it left it."""
        self.made.record(self._claimed)
        self._claimed = []
        self._write()

    def forget(self, key: str) -> None:
        """``key`` was removed: nothing there is the pipeline's any more."""
        self.made.forget(key)
        self._write()

    def finish(self, index: int, outputs: dict[str, str], written: list[str]) -> None:
        """Record stage ``index``, begun with :meth:`begin`, as finished, in place of what the journal
        held from there on (until then an earlier run's record stands: a stage refused before it wrote
        anything loses nothing); ``written``: every path the stages so far wrote."""
        began = self.running or {}
        keys = list(dict.fromkeys(self.key(path) for path in written))
        state = {key: listing(self.where(key), self.skips.get(key, ())) for key in keys}
        del self.entries[index:]
        self.entries.append(Entry(began["name"], began["options"], self.record(outputs), state, began["inputs"]))
        self._learn(self.entries[-1:])
        self.running = None
        self._write()

    def _write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        stages = [asdict(entry) for entry in self.entries]
        payload = {"format": FORMAT, "stages": stages, "made": self.made.identities, "running": self.running}
        write_json(self.path, payload)


def _skips(keys: Keys, outputs: Iterable[tuple[str, tuple[str, ...]]]) -> dict[str, tuple[str, ...]]:
    """Per output's key, what lies in it that is not part of what made it: the folders its commands
    call scratch (a run's checkpoints), and other stages' outputs inside it (eval's results in a run)."""
    found: dict[str, tuple[str, ...]] = {}
    for path, scratch in outputs:
        key = keys.key(path)
        found[key] = (*found.get(key, ()), *scratch)
    for inner in found:
        for outer in found:
            inner_path, outer_path = keys.where(inner).resolve(), keys.where(outer).resolve()
            if inner != outer and inner_path.is_relative_to(outer_path):
                found[outer] = (*found[outer], str(inner_path.relative_to(outer_path)))
    return found


def _check(journal: Journal) -> None:
    """Raise ValueError unless what was read has the journal's shape (a hand edit gone wrong)."""
    strings = lambda d: isinstance(d, dict) and all(isinstance(v, str) for v in d.values())  # noqa: E731
    listings = lambda d: isinstance(d, dict) and all(strings(v) for v in d.values())  # noqa: E731
    for entry in journal.entries:
        if not (isinstance(entry.name, str) and isinstance(entry.options, dict) and strings(entry.outputs)):
            raise ValueError
        if not (listings(entry.state) and listings(entry.inputs)):
            raise ValueError
    if not strings(journal.made.identities):
        raise ValueError
    if journal.running is not None and not isinstance(journal.running, dict):
        raise ValueError
