"""Dataclass options → argparse flags and YAML keys, so each command's options are defined once.

Each field's ``metadata["help"]`` is its ``--help`` text; ``metadata["flag"]`` optionally names
the flag (default: the field name with dashes); ``metadata["choices"]`` limits the values;
``metadata["positional"]`` makes it a positional argument. Booleans become ``--flag`` switches.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, Field, field
from typing import Any

from .errors import SvdadaptError


def opt(default: Any = MISSING, help: str = "", **meta: Any) -> Any:
    """A dataclass field with CLI metadata (``help``, ``choices``, ``flag``, ``positional``)."""
    return field(default=default, metadata={"help": help, **meta})


def _base_type(tp: Any) -> Any:
    """``int | None`` → ``int``; ``list[str]`` → ``list``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return origin or tp


def _converter(tp: Any):
    base = _base_type(tp)
    if base is bool:
        return None
    if base in (int, float, str):
        return base
    return str


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag (or positional) per dataclass field of ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        _add_field(parser, f, hints[f.name])


def _add_field(parser: argparse.ArgumentParser, f: Field, tp: Any) -> None:
    meta = f.metadata
    required = f.default is MISSING and f.default_factory is MISSING
    default = None if required else (f.default if f.default is not MISSING else f.default_factory())
    kwargs: dict[str, Any] = {"help": meta.get("help", "")}
    if meta.get("choices"):
        kwargs["choices"] = meta["choices"]
    if meta.get("positional"):
        if meta.get("nargs"):
            kwargs["nargs"] = meta["nargs"]
        parser.add_argument(f.name, type=_converter(tp), **kwargs)
        return
    flag = "--" + meta.get("flag", f.name.replace("_", "-"))
    if _base_type(tp) is bool:
        parser.add_argument(flag, dest=f.name, action="store_true", default=default, **kwargs)
        return
    if not required and default is not None:
        kwargs["help"] += f" (default: {default})"
    parser.add_argument(
        flag, dest=f.name, type=_converter(tp), default=default, required=required, metavar=meta.get("metavar"),
        **kwargs,
    )  # fmt: skip


def from_namespace(cls: type, ns: argparse.Namespace) -> Any:
    """Build ``cls`` from parsed arguments (only its own fields are read)."""
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


def from_mapping(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build ``cls`` from a YAML mapping; unknown keys are an error naming ``where``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise SvdadaptError(f"unknown key {unknown[0]!r} in {where}; known keys: {', '.join(sorted(names))}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise SvdadaptError(f"{where}: {exc}") from None
