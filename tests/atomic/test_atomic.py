"""Atomic directories: everything inside is on disk before the directory takes its name."""

import os

import pytest

from svdadapt import atomic
from svdadapt.atomic import atomic_directory


def test_every_file_and_directory_is_flushed_before_the_rename(tmp_path, monkeypatch):
    synced, renamed = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        atomic.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd)
    )
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: renamed.append(len(synced)) or real_replace(a, b))
    with atomic_directory(tmp_path / "run") as tmp:
        (tmp / "base").mkdir()
        (tmp / "base" / "model.safetensors").write_bytes(b"weights")  # written in place, never synced
        (tmp / "run.json").write_text("{}")
        staged = str(tmp)
    flushed_before_rename = set(synced[: renamed[0]])
    assert {f"{staged}/base/model.safetensors", f"{staged}/run.json", f"{staged}/base", staged} <= flushed_before_rename
    assert (tmp_path / "run" / "base" / "model.safetensors").read_bytes() == b"weights"


def test_a_failed_write_leaves_nothing_under_the_name(tmp_path):
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "run") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_special_files_inside_are_skipped_not_opened(tmp_path):
    """A fifo left in a run directory (e.g. hard-linked along) must neither block nor fail the write."""
    with atomic_directory(tmp_path / "run") as tmp:
        os.mkfifo(tmp / "pipe")
        os.symlink(tmp / "missing", tmp / "dangling")
        (tmp / "run.json").write_text("{}")
    assert (tmp_path / "run" / "run.json").read_text() == "{}"
