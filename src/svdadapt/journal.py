"""A pipeline's journal (``OUT/pipeline.json``): what each finished stage was given and what it left,
so that ``svdadapt run RECIPE --resume`` keeps the stages that are done and runs the rest.

A stage is kept when it and every stage before it finished with the same options and the same
inputs from outside the pipeline (the local files and folders its options name: a model, a data
file), and what they wrote is as they left it (a fingerprint of names, sizes and modification
times, not of contents: cheap for a 70B model). Writing a path in place after its stage finished
(``train`` trains the run ``build`` wrote) is part of the later stage's record; the run is kept as
built only while that later stage can continue from it (a training with checkpoints).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_json
from .errors import SvdadaptError

JOURNAL_FILE = "pipeline.json"
FORMAT = "svdadapt-pipeline-1"
RUN_CONTROL = ("resume", "overwrite")  # how a stage was asked to write, not what it made


def fingerprint(path: str | Path) -> str:
    """Names, sizes and modification times of everything under ``path`` (``absent`` if missing)."""
    path = Path(path).expanduser()
    if not path.exists():
        return "absent"
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        stat, name = file.stat(), file.relative_to(path) if file != path else ""
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def outside_inputs(values: dict[str, Any], written: list[str]) -> dict[str, str]:
    """Fingerprints of the local files and folders a stage's options name (``model``, a data file,
    ``kind:path`` specs) that no stage of the pipeline wrote."""
    found: dict[str, str] = {}
    for value in values.values():
        if not isinstance(value, str) or not value or value in written:
            continue
        for candidate in (value, value.partition(":")[2]):
            if candidate and Path(candidate).expanduser().exists():
                found[candidate] = fingerprint(candidate)
    return found


def options_record(values: dict[str, Any]) -> dict[str, Any]:
    """A stage's flat option values as JSON would hold them, without the run-control flags."""
    return json.loads(json.dumps({k: v for k, v in values.items() if k not in RUN_CONTROL}, default=str))


@dataclass
class Entry:
    name: str
    options: dict[str, Any]
    outputs: dict[str, str]  # what it handed to later stages
    state: dict[str, str]  # fingerprint of every path the stages so far wrote, as this one left them
    inputs: dict[str, str] = field(default_factory=dict)  # fingerprints of what it read from outside


@dataclass
class Journal:
    path: Path
    entries: list[Entry] = field(default_factory=list)
    made: list[str] = field(default_factory=list)  # every path a run of the pipeline wrote, kept or not
    exists: bool = False  # an earlier run of a pipeline into this OUT left it

    @classmethod
    def open(cls, out: Path) -> Journal:
        path = out / JOURNAL_FILE
        if not path.is_file():
            return cls(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            entries = [Entry(**entry) for entry in payload["stages"]] if payload["format"] == FORMAT else None
            made = [str(p) for p in payload["made"]]
        except (OSError, ValueError, KeyError, TypeError):
            entries = None
        if entries is None:
            raise SvdadaptError(f"{path} is not an svdadapt pipeline journal; give another out=")
        return cls(path, entries, made, exists=True)

    def done(self) -> str:
        """The finished stages, for messages."""
        return f"stages {', '.join(e.name for e in self.entries)} finished" if self.entries else "no stage finished"

    def matches(self, index: int, name: str, values: dict[str, Any]) -> str | None:
        """Why stage ``index`` (0-based) cannot be kept on its options, or None if they are the same."""
        if index >= len(self.entries):
            return "it did not finish before"
        entry = self.entries[index]
        if entry.name != name:
            return f"the recipe had {entry.name!r} here before"
        now = options_record(values)
        changed = sorted(k for k in set(now) | set(entry.options) if now.get(k) != entry.options.get(k))
        if changed:
            key = changed[0]
            return f"its options changed ({key}: {entry.options.get(key)!r} → {now.get(key)!r})"
        for path, mark in entry.inputs.items():
            if fingerprint(path) != mark:
                return f"{path}, which it read, changed after it finished"
        return None

    def unchanged(self, index: int, ignore: set[str] = frozenset()) -> bool:
        """Whether what the stages up to ``index`` wrote is as stage ``index`` left it."""
        state = self.entries[index].state
        return all(fingerprint(path) == mark for path, mark in state.items() if path not in ignore)

    def start(self, kept: int) -> None:
        """Forget the stages after the first ``kept`` (about to run again); written at once."""
        del self.entries[kept:]
        self._write()

    def finish(self, name: str, values: dict[str, Any], outputs: dict[str, str], written: list[str]) -> None:
        """Record a stage that finished; ``written``: every path the stages so far wrote."""
        state = {path: fingerprint(path) for path in dict.fromkeys(written)}
        inputs = outside_inputs(values, written)
        self.entries.append(Entry(name, options_record(values), dict(outputs), state, inputs))
        self.made = list(dict.fromkeys([*self.made, *written]))
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stages = [vars(entry) for entry in self.entries]
        write_json(self.path, {"format": FORMAT, "stages": stages, "made": self.made})
