"""Trainer's checkpoints in a run (``--save-checkpoints``): which one a resumed training continues
from. Trainer writes a checkpoint file by file, ``trainer_state.json`` last; one cut short (Ctrl-C
or a kill while saving) is not complete, so the newest complete one is used and the rest dropped."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

CHECKPOINTS = "checkpoints"  # the folder in a run
TRAINABLE_FILE = "trainable.safetensors"  # in each checkpoint: the trainable tensors only
PROGRESS_FILE = "svdadapt_progress.json"  # in each checkpoint: the loss summed over every step so far
STATE_FILE = "trainer_state.json"  # Trainer's, written last
_NAME = re.compile(r"^checkpoint-(\d+)$")


def _numbered(run_path: Path) -> list[tuple[int, Path]]:
    folder = Path(run_path) / CHECKPOINTS
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint-*") if (m := _NAME.match(p.name)) and p.is_dir()]
    return sorted(found)


def is_complete(checkpoint: Path) -> bool:
    """Whether Trainer finished writing ``checkpoint``."""
    if not ((checkpoint / TRAINABLE_FILE).is_file() and (checkpoint / PROGRESS_FILE).is_file()):
        return False
    try:
        return isinstance(json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def complete_checkpoints(run_path: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint kept in the run, oldest first."""
    return [(step, path) for step, path in _numbered(run_path) if is_complete(path)]


def last_checkpoint(run_path: Path) -> str | None:
    """The newest complete checkpoint kept in the run, if any."""
    complete = complete_checkpoints(run_path)
    return str(complete[-1][1]) if complete else None


def drop_incomplete(run_path: Path) -> list[Path]:
    """Remove the checkpoints cut short while being written; the ones removed."""
    dropped = [path for _, path in _numbered(run_path) if not is_complete(path)]
    for path in dropped:
        shutil.rmtree(path, ignore_errors=True)
    return dropped
