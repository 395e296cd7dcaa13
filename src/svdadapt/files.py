"""Reading what svdadapt and others wrote, checked before use: one line naming the file on any fault.

- :func:`inside`: a name a store, a run or a checkpoint lists must resolve inside its directory;
  absolute names, ``..`` and links that lead out are refused before anything is opened.
- :func:`read_json`: a JSON object, or one line (missing, not UTF-8, not JSON, not an object).
- :func:`check_safetensors`: the header of a safetensors file against the file itself (truncated,
  damaged header, unknown dtype, a tensor's bytes not where its shape says), without reading data.
- :func:`load_tensors` / :func:`open_tensors`: the tensors of a checked file.
- :func:`file_record` / :func:`verify_record`: the size and CRC-32 a store or run records for each
  file it wrote, and their check (a checksum against accidental damage: whoever can edit a file can
  edit the record beside it too, so a cryptographic hash would promise nothing more).
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .errors import SvdadaptError

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
MAX_JSON = 256 << 20  # a run's, store's or model's JSON file: far more than any writes


def inside(directory: Path, name: Any, what: str) -> Path:
    """``directory / name``, where ``name`` (as a file lists it) must stay inside ``directory``."""
    if not isinstance(name, str) or not name or Path(name).is_absolute():
        raise SvdadaptError(f"{what} names {name!r}, not a file inside {directory}; it is damaged or was tampered with")
    path = directory / name
    root = directory.resolve()
    if not path.resolve().is_relative_to(root):
        raise SvdadaptError(f"{what} names {name!r}, outside {directory}; it is damaged or was tampered with")
    return path


def no_links_out(directory: Path, what: str, skip: tuple[str, ...] = ()) -> None:
    """Refuse ``directory`` when anything in it (its index file, a base folder, a shard; not under the
    top-level names in ``skip``) is a link that leads outside it: what a store or run holds is its own."""
    root = directory.resolve()
    for folder, dirs, files in os.walk(directory, followlinks=False):
        if Path(folder) == directory:
            dirs[:] = [d for d in dirs if d not in skip]
        for name in [*dirs, *files]:
            entry = Path(folder) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                raise SvdadaptError(
                    f"{what} {directory} holds {entry.relative_to(directory)}, a link that leads outside it; "
                    "it was tampered with: copy the real files in, or make it again"
                )


def read_json(path: Path, what: str, fix: str) -> dict:
    """The JSON object in ``path``; ``what`` names the file in messages, ``fix`` says what to do."""
    if not path.is_file():
        raise SvdadaptError(f"{what} {path} is missing; {fix}")
    if path.stat().st_size > MAX_JSON:
        raise SvdadaptError(f"{what} {path} is {path.stat().st_size >> 20} MiB, too large for one; {fix}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise SvdadaptError(f"{what} {path} is nested too deeply to be one; {fix}") from None
    except UnicodeDecodeError:
        raise SvdadaptError(f"{what} {path} is not UTF-8 text; {fix}") from None
    except json.JSONDecodeError as exc:
        raise SvdadaptError(f"{what} {path} is not valid JSON ({exc.msg}, line {exc.lineno}); {fix}") from None
    if not isinstance(value, dict):
        raise SvdadaptError(f"{what} {path} does not hold a JSON object; {fix}")
    return value


def require_fields(record: dict, fields: dict[str, type | tuple[type, ...]], where: str, fix: str) -> None:
    """Each field present with a value of its type (one line naming the first that is not)."""
    for name, kind in fields.items():
        if name not in record:
            raise SvdadaptError(f"{where} lacks {name!r}; {fix}")
        value, allowed = record[name], kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise SvdadaptError(f"{where}: {name!r} has the wrong type ({type(value).__name__}); {fix}")


def check_safetensors(path: Path, what: str, fix: str) -> dict[str, dict]:
    """The tensor entries of a safetensors file's header, each checked against the file's size."""
    if not path.is_file():
        raise SvdadaptError(f"{what} {path} is missing; {fix}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or length > min(MAX_HEADER, size - 8):
            raise SvdadaptError(f"{what} {path} is truncated or not a safetensors file; {fix}")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SvdadaptError(f"{what} {path} has a damaged header; {fix}") from None
    if not isinstance(header, dict):
        raise SvdadaptError(f"{what} {path} has a damaged header; {fix}")
    data = size - 8 - length
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    for key, entry in entries.items():
        try:
            begin, end = entry["data_offsets"]
            expected = math.prod(entry["shape"]) * DTYPE_BYTES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise SvdadaptError(f"{what} {path} has a damaged entry for {key!r}; {fix}") from None
        if end - begin != expected or begin < 0:
            raise SvdadaptError(f"{what} {path} has a damaged entry for {key!r}; {fix}")
        if end > data:
            raise SvdadaptError(f"{what} {path} is truncated ({size} bytes, {8 + length + end} needed); {fix}")
    return entries


def load_tensors(path: Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """Every tensor of a checked safetensors file."""
    check_safetensors(path, what, fix)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise SvdadaptError(f"{what} {path} could not be read ({first_line(exc)}); {fix}") from None


@contextmanager
def open_tensors(path: Path, what: str, fix: str) -> Iterator[Any]:
    """A checked safetensors file opened for reading tensors one at a time (``safe_open``)."""
    check_safetensors(path, what, fix)
    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except SafetensorError as exc:
        raise SvdadaptError(f"{what} {path} could not be read ({first_line(exc)}); {fix}") from None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def crc32(path: Path) -> str:
    value = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            value = zlib.crc32(chunk, value)
    return f"{value:08x}"


def file_record(path: Path) -> dict:
    """What a store or run records of a file it wrote: its size and CRC-32."""
    return {"bytes": os.path.getsize(path), "crc32": crc32(path)}


def verify_record(path: Path, record: Any, what: str, fix: str, checksum: bool = True) -> None:
    """``path`` is the file ``record`` describes: the same size (and, with ``checksum``, content)."""
    if not isinstance(record, dict):
        return  # written before records were kept
    if not path.is_file():
        raise SvdadaptError(f"{what} {path} is missing; {fix}")
    size = path.stat().st_size
    if record.get("bytes") is not None and size != record["bytes"]:
        raise SvdadaptError(f"{what} {path} has {size} bytes, {record['bytes']} were written; {fix}")
    if checksum and record.get("crc32") and crc32(path) != record["crc32"]:
        raise SvdadaptError(f"{what} {path} is not the file that was written (checksum differs); {fix}")
