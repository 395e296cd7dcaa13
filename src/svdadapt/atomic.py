"""Atomic writes: a reader sees the old content or the new, never a half-written file or directory;
and :func:`exclusive`, one writer per output at a time."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from .errors import SvdadaptError
from .linalg import all_finite


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Every file under ``root`` on disk, then every directory (files written through
    :func:`atomic_path` are already there and cost nothing; others, e.g. a model saved by
    ``save_pretrained`` or written in place, are flushed now)."""
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(directory, name)
            if not stat.S_ISREG(os.lstat(path).st_mode):  # links, fifos, sockets: nothing to flush
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(directory))


@contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it is renamed over ``target`` in one step."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # the usual file mode (mkstemp, and safetensors writing over the path, leave 0600)
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(target: Path | str, payload: dict) -> None:
    """Write ``payload`` as indented JSON, atomically; a number that is not finite (which JSON cannot
    hold) is refused with one line naming where it sits, and nothing is written."""
    try:
        text = json.dumps(payload, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
        where = _non_finite_at(payload) or "a value"
        raise SvdadaptError(f"{where} is not a finite number, so {target} was not written") from None
    with atomic_path(target) as tmp:
        tmp.write_text(text + "\n")


def _non_finite_at(value, path: str = "") -> str | None:
    """The key path of the first float that is inf or nan in a JSON-like value."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "a value"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, inner in items:
        found = _non_finite_at(inner, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def require_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """One line naming the first floating tensor holding inf or nan (``where``: what it belongs to):
    no non-finite tensor is ever written as a result."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.numel() and not all_finite(tensor.detach()):
            raise SvdadaptError(
                f"{name} in {where} holds non-finite values (inf or nan), so it was not written; the computation "
                "that made it diverged or its input is damaged"
            )


def write_safetensors(target: Path | str, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Write tensors (made contiguous, moved to CPU) as a safetensors file, atomically; tensors that
    are not finite are refused (:func:`require_finite`) before anything is written."""
    require_finite(tensors, str(target))
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(target) as tmp:
        try:
            save_file(cpu, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # the Rust writer's IO errors: disk full, file-size limit, ...
            raise OSError(f"could not write {target} ({_io_reason(exc)}); free space, or write elsewhere") from None


def _io_reason(exc: BaseException) -> str:
    """What an IO error from safetensors' writer says, without its Rust debug form."""
    text = str(exc)
    found = re.search(r'message: "([^"]+)"', text)
    return found[1] if found else text.split("\n")[0][:200]


def saved_pretrained(save, target: Path, what: str) -> None:
    """``save()`` (a ``save_pretrained``) into ``target``; its IO failures as one line naming what."""
    try:
        save()
    except (SafetensorError, OSError) as exc:
        reason = _io_reason(exc)
        raise OSError(f"could not write {what} into {target} ({reason}); free space, or write elsewhere") from None


@contextmanager
def atomic_directory(target: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``target`` (which may exist).

    An interrupted write leaves only a hidden ``.<name>.*.tmp`` directory behind, never a directory
    under ``target``'s name that looks complete: everything in it is on disk before the rename.
    """
    target = Path(target)
    if target.is_symlink():
        target = Path(os.path.realpath(target))  # a link to a folder on a bigger disk: written there, the link kept
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
    try:
        yield tmp
        _fsync_tree(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _lock_file(fd: int) -> bool:
    """Take the exclusive lock of an open file without waiting; False if another process holds it.
    The kernel drops the lock when its process ends, however it ends (POSIX flock)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _leftovers(target: Path) -> list[Path]:
    """What a writer of ``target`` that died left beside it: temporary files and directories of
    atomic writes (``.NAME.XXXXXXXX.tmp``) and a replaced old version (``.NAME.old.PID``)."""
    name = re.escape(target.name)
    pattern = re.compile(rf"\.{name}\.([a-z0-9_]{{8}}\.tmp|old\.\d+)")
    return [p for p in target.parent.glob(f".{target.name}.*") if pattern.fullmatch(p.name)]


@contextmanager
def exclusive(target: Path | str) -> Iterator[None]:
    """Be the only svdadapt process writing ``target`` while inside; a second writer is refused at
    once with one line. Once the lock is held, what earlier writers that died left beside ``target``
    is removed. The lock is a hidden ``.NAME.lock`` file beside ``target`` that lives as long as the
    lock: the kernel drops it with its process however that ends, and a lock file whose holder
    removed or replaced it in the meantime is not trusted (its inode is checked). Folders made for
    the lock are removed after it when nothing was written into them (a failed writer leaves no
    empty ``RUN/eval/``)."""
    target = Path(os.path.realpath(Path(target).expanduser()))  # two links to one folder: one lock
    made = [folder for folder in (target.parent, *target.parent.parents) if not folder.exists()]  # innermost first
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        if not _lock_file(fd):
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SvdadaptError(
                f"{target} is being written by another svdadapt process (pid {holder}); wait for it to "
                "finish, or choose another output"
            )
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the holder before removed that file: lock the one at the path now
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        for leftover in _leftovers(target):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still holding it
        os.close(fd)  # releases the lock
        for folder in made:
            try:
                folder.rmdir()  # only if empty: what a writer put there stays
            except OSError:
                break
