"""Options: dataclasses whose fields are a command's flags and YAML keys, checked in one place.

A field is declared with :func:`opt` (``help`` is its ``--help`` text; ``check`` a :class:`Check` of
its value; ``choices``; ``flag`` to rename it; ``positional``). A field whose value is itself an
option group is declared with :func:`group`: the group's fields become flags of the command, with an
optional ``prefix`` (``--calib-samples``) and per-use ``defaults``; the same group class serves
every command that has those options.

A command's options class derives from :class:`Options`: constructing one checks every field,
its groups' included (type, choices, check), then the class's own ``check()`` for what involves
several fields; any problem is one :class:`~svdadapt.errors.SvdadaptError` naming the flag.
Argparse flags (:func:`add_options`), YAML keys (:func:`from_mapping`) and parsed arguments
(:func:`from_namespace`) all go through the same flat view of the fields (:func:`flat_fields`).
"""

from __future__ import annotations

import argparse
import contextvars
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field
from typing import Any

from .aliases import aliases_of, renamed
from .errors import Problems, SvdadaptError, closest, unknown


@dataclass(frozen=True)
class Check:
    """A condition on a field's value (None always passes) and what it requires, for the message."""

    test: Callable[[Any], bool]
    requirement: str  # e.g. "must be positive"


MAX_VALUE = 2**32 - 1  # the largest number (in size) any option takes
POSITIVE = Check(lambda v: v > 0, "must be positive")
SEED = Check(lambda v: v >= 0, "must be a non-negative integer")
NON_NEGATIVE = Check(lambda v: v >= 0, "must be non-negative")
FRACTION = Check(lambda v: 0 <= v < 1, "must be in [0, 1)")


def at_least(n: int) -> Check:
    return Check(lambda v: v >= n, f"must be at least {n}")


def between(low: int, high: int) -> Check:
    return Check(lambda v: low <= v <= high, f"must be between {low} and {high}")


def check_positions(flag: str, length: int | None, limit: int | None) -> None:
    """Refuse a window length (``flag``'s value) beyond the model's positions (``limit``, once known;
    None when the model does not say)."""
    if length is not None and limit is not None and length > limit:
        raise SvdadaptError(f"{flag} {length} is beyond this model's limit of {limit} positions")


def opt(default: Any = MISSING, help: str = "", *, check: Check | None = None, **meta: Any) -> Any:
    """A dataclass field with CLI metadata (``help``, ``check``, ``choices``, ``flag``, ``positional``,
    ``nargs``, ``const``, ``metavar``; ``repeat=True``: a list flag given once per value; ``listed=True``:
    comma-separated text, which YAML may give as a list; ``how=True``:
    it says how the command runs or writes, not what it makes, e.g. ``--offload``, ``--resume``;
    ``infinite=True``: a float that may be ±inf or nan, which every other float option refuses)."""
    return field(default=default, metadata={"help": help, "check": check, **meta})


def group(cls: type | Callable[[], type], prefix: str = "", defaults: dict[str, Any] | None = None) -> Any:
    """A field holding option group ``cls``, its flags prefixed with ``prefix`` (``calib_`` gives
    ``--calib-samples``) and its defaults overridden by ``defaults`` (None makes a required field optional).
    ``cls`` may be a function that makes the group's class when its flags are read (a group whose
    fields follow a live table, e.g. the method rows' parameters); such a group has no required field."""
    defaults = dict(defaults or {})
    meta = {"group": cls, "prefix": prefix, "defaults": defaults}
    if isinstance(cls, type):
        required = [f.name for f in dataclasses.fields(cls) if _default(f) is MISSING and f.name not in defaults]
        if required:
            return field(metadata=meta)
    return field(default_factory=lambda: _construct(group_class(meta), defaults), metadata=meta)


def group_class(meta: Any) -> type:
    """The class of the option group a field's metadata holds (made now where it follows a live table)."""
    cls = meta["group"]
    return cls if isinstance(cls, type) else cls()


_INSIDE_GROUP = contextvars.ContextVar("inside_group", default=False)  # checked by the enclosing options


class Options:
    """Base of every options class (a command's or a group's): every field is checked on construction
    (see the module docstring). A group built inside its command's options is checked by them, so
    that messages name its flags as the command spells them (``--calib-samples``)."""

    def __post_init__(self) -> None:
        if _INSIDE_GROUP.get():
            return
        for flat in flat_fields(type(self)):
            _check_value(flat, flat.get(self))
        _check_groups(self)
        self.check()

    def check(self) -> None:
        """Checks that involve several fields; raise :class:`SvdadaptError` naming the flags."""

    @classmethod
    def of(cls, **values: Any) -> Any:
        """Construct from flat keyword arguments named as the flags and YAML keys are
        (``BuildOptions.of(model=..., method="corda-kpa", rank=16, data="wiki", out=...)``)."""
        return from_mapping(cls, values, cls.__name__)


def _check_groups(obj: Options) -> None:
    """Each group's own checks of several fields, innermost first."""
    for f in dataclasses.fields(obj):
        if "group" in f.metadata:
            inner = getattr(obj, f.name)
            _check_groups(inner)
            inner.check()


@dataclass(frozen=True)
class FlatField:
    """One flag of a command: a field of its options class or of a group inside it."""

    path: tuple[str, ...]  # attribute path from the command's options object
    dest: str  # argparse dest and YAML key: the prefixed field name
    field: Field
    type: Any
    prefix: str
    default: Any  # after the group's per-use defaults; MISSING if required

    @property
    def flag(self) -> str:
        return "--" + self.prefix.replace("_", "-") + self.field.metadata.get("flag", self.field.name.replace("_", "-"))

    @property
    def name(self) -> str:
        """How messages name it: the flag, or the positional argument."""
        return self.dest.upper() if self.field.metadata.get("positional") else self.flag

    def get(self, obj: Any) -> Any:
        for part in self.path:
            obj = getattr(obj, part)
        return obj


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def flat_fields(
    cls: type, prefix: str = "", path: tuple[str, ...] = (), defaults: dict | None = None
) -> list[FlatField]:
    """Every flag of ``cls``, groups expanded, in declaration order."""
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    flat: list[FlatField] = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "group" in meta:
            flat += flat_fields(group_class(meta), prefix + meta["prefix"], (*path, f.name), meta["defaults"])
            continue
        default = defaults[f.name] if f.name in defaults else _default(f)
        flat.append(FlatField((*path, f.name), prefix + f.name, f, hints[f.name], prefix, default))
    return flat


def _construct(cls: type, values: dict[str, Any], prefix: str = "", defaults: dict | None = None) -> Any:
    """``cls`` from flat values keyed by dest (missing ones take their defaults)."""
    defaults = defaults or {}
    kwargs = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "group" in meta:
            token = _INSIDE_GROUP.set(True)
            try:
                kwargs[f.name] = _construct(group_class(meta), values, prefix + meta["prefix"], meta["defaults"])
            finally:
                _INSIDE_GROUP.reset(token)
        elif prefix + f.name in values:
            kwargs[f.name] = values[prefix + f.name]
        elif f.name in defaults:
            kwargs[f.name] = defaults[f.name]
    return cls(**kwargs)


# ------------------------------------------------------------------------------------------ checks
def _base_type(tp: Any) -> Any:
    """``int | None`` → ``int``; ``list[str]`` → ``list``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return origin or tp


_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}


def _has_type(value: Any, base: Any) -> bool:
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, base) if isinstance(base, type) else True


def _check_value(flat: FlatField, value: Any) -> None:
    if value is None and flat.default is MISSING:
        raise SvdadaptError(f"{flat.name} is required (got None)")
    if value is MISSING or value is None:
        return
    base = _base_type(flat.type)
    if not _has_type(value, base):
        raise SvdadaptError(f"{flat.name} must be {_KINDS.get(base, base.__name__)}, got {value!r}")
    if base is float and not math.isfinite(value) and not flat.field.metadata.get("infinite"):
        raise SvdadaptError(f"{flat.name} must be a finite number, got {value!r}")
    if base in (int, float) and abs(value) > MAX_VALUE:  # no count sizes memory beyond this, no rate means more
        raise SvdadaptError(f"{flat.name} must be at most {MAX_VALUE} in size, got {value!r}")
    choices = flat.field.metadata.get("choices")
    if choices and value not in choices:
        raise SvdadaptError(f"{flat.name}: {unknown('value', value, choices)}")
    check: Check | None = flat.field.metadata.get("check")
    if check is not None and not check.test(value):
        raise SvdadaptError(f"{flat.name} {check.requirement}, got {value!r}")


# ------------------------------------------------------------------------------------------ argparse
def _converter(tp: Any):
    base = _base_type(tp)
    if base is bool:
        return None
    if base in (int, float, str):
        return base
    return str


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag (or positional) per field of ``cls``, groups expanded."""
    for flat in flat_fields(cls):
        _add(parser, flat)


def _add(parser: argparse.ArgumentParser, flat: FlatField) -> None:
    meta = flat.field.metadata
    required = flat.default is MISSING
    default = None if required else flat.default
    kwargs: dict[str, Any] = {"help": meta.get("help", "")}
    if meta.get("choices"):
        kwargs["choices"] = meta["choices"]
    if meta.get("positional"):
        if meta.get("nargs"):
            kwargs["nargs"] = meta["nargs"]
        parser.add_argument(flat.dest, type=_converter(flat.type), **kwargs)
        return
    if _base_type(flat.type) is bool:
        parser.add_argument(flat.flag, dest=flat.dest, action="store_true", default=default, **kwargs)
        return
    if not required and default is not None:
        kwargs["help"] += f" (default: {default})"
    if meta.get("nargs"):  # e.g. "?": the bare flag means ``const``
        kwargs |= {"nargs": meta["nargs"], "const": meta.get("const")}
    if meta.get("repeat"):  # --prompt A --prompt B: a list
        kwargs["action"] = "append"
    parser.add_argument(
        flat.flag, dest=flat.dest, type=_converter(flat.type), default=default, required=required,
        metavar=meta.get("metavar"), **kwargs,
    )  # fmt: skip


def add_aliases(parser: argparse.ArgumentParser, cls: type) -> None:
    """Hidden flags for the aliases of ``cls``'s options (``--learning-rate`` for ``--module-lr``)."""
    flats = {flat.dest: flat for flat in flat_fields(cls)}
    for alias, dest in aliases_of(set(flats)).items():
        if len(alias) > 1 and not flats[dest].field.metadata.get("positional"):
            flag = "--" + alias.replace("_", "-")
            converter = _converter(flats[dest].type)
            parser.add_argument(flag, dest=dest, type=converter, help=argparse.SUPPRESS, default=argparse.SUPPRESS)


def from_namespace(cls: type, ns: argparse.Namespace) -> Any:
    """Build ``cls`` from parsed arguments (only its own flags are read)."""
    return _construct(cls, {flat.dest: getattr(ns, flat.dest) for flat in flat_fields(cls)})


def from_mapping(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build ``cls`` from a mapping of flag names (``seq_len``, ``calib_samples``; the aliases of
    :mod:`svdadapt.aliases` too); every unknown key, missing required one and bad value is said at
    once, naming ``where`` (:class:`~svdadapt.errors.Problems`)."""
    values, problems = mapping_problems(cls, values, where)
    if problems:
        raise Problems(problems)
    try:
        return _construct(cls, values)
    except SvdadaptError as exc:
        raise Problems([f"{where}: {exc}"]) from None


def mapping_problems(
    cls: type, values: dict[str, Any], where: str, complete: bool = True
) -> tuple[dict[str, Any], list[str]]:
    """``values`` with aliases renamed and read as their flags read them, and every problem with them
    on their own: unknown keys ("did you mean"), required keys missing, values of the wrong type or
    range (what involves several options is checked once they are all good). ``complete``: the
    mapping is all there is (not defaults for flags, which may give what is required)."""
    flats = {flat.dest: flat for flat in flat_fields(cls)}
    values, twice = renamed(values, set(flats))
    strangers = sorted(set(values) - set(flats), key=str)
    guessed = {closest(key, flats) for key in strangers}  # a misspelt required key is said once, as unknown
    missing = [d for d, flat in flats.items() if flat.default is MISSING and d not in values and d not in guessed]
    missing = missing if complete else []
    values = yaml_values(cls, {k: v for k, v in values.items() if k in flats})
    bad = []
    for dest, value in values.items():
        try:
            _check_value(flats[dest], value)
        except SvdadaptError as exc:
            bad.append(f"{where}: {exc}")
    problems = [f"{where}: {p}" for p in twice]
    problems += [str(unknown("key", key, sorted(flats), where=where)) for key in strangers]
    problems += [f"{where} needs {dest!r}" for dest in missing]
    return values, problems + bad


def yaml_values(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` read from YAML (keyed by dest), with what YAML 1.1 misread for ``cls``'s fields
    read as their flags would read it (see :func:`_yaml_1_1`); other keys are left as they are."""
    flats = {flat.dest: flat for flat in flat_fields(cls)}
    return {k: _yaml_1_1(v, flats[k]) if k in flats else v for k, v in values.items()}


def _yaml_1_1(value: Any, flat: FlatField) -> Any:
    """What YAML 1.1 misread, as its flag would read it: a number written as text (``1e-05``: YAML
    1.1 wants a dot), a number where text is read, and ``on``/``off`` read as true/false for a choice
    of on/off; anything else is left for the checks."""
    base = _base_type(flat.type)
    if base in (int, float) and isinstance(value, str):
        try:
            return base(value)
        except ValueError:
            return value
    if base is str and isinstance(value, bool) and {"on", "off"} <= set(flat.field.metadata.get("choices") or ()):
        return "on" if value else "off"
    if base is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a number where text is read (``discard: 16``), as its flag reads it
    if base is str and isinstance(value, list) and flat.field.metadata.get("listed"):
        return ",".join(map(str, value))  # a YAML list where comma-separated names are read (``targets: [q, v]``)
    if base is list and isinstance(value, str):
        return [value]  # one value of a list read once per value (``prompt: hello``)
    return value


def flat_values(obj: Any) -> dict[str, Any]:
    """The options object as flat ``{dest: value}`` (as YAML keys would give it)."""
    return {flat.dest: flat.get(obj) for flat in flat_fields(type(obj))}


def result_values(obj: Any) -> dict[str, Any]:
    """:func:`flat_values` of the options that change what the command makes (not those marked ``how``)."""
    return {flat.dest: flat.get(obj) for flat in flat_fields(type(obj)) if not flat.field.metadata.get("how")}
