"""The method rows' own parameters as an option group: one flag and YAML key per parameter any row
of the live table declares (``--truncation``, ``--rho``, ``--freeze-a``, ``--beta``...), made when
the flags are read, so a row registered later brings its flags with it. Each is None unless given;
the method's row checks that it has the parameter and that the value is in range
(:meth:`svdadapt.methods.Method.configured`)."""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any

from .errors import SvdadaptError
from .methods import METHODS, Method, Param
from .options import Options, flat_values, opt


def _help(param: Param, rows: list[Method]) -> str:
    defaults = {m.name: m.value(param.name) for m in rows}
    if len(set(map(repr, defaults.values()))) == 1:
        default = f"default {param.default!r}" if param.type is not bool else ""
    else:
        default = "default " + ", ".join(f"{v!r} for {name}" for name, v in defaults.items())
    names = ", ".join(m.name for m in rows)
    return f"{names}: {param.help}" + (f" ({default})" if default else "")


@lru_cache(maxsize=32)
def _group(stage: str, declared: tuple[tuple[str, Param, tuple[str, ...]], ...]) -> type:
    fields = []
    for name, param, rows in declared:
        help_text = _help(param, [METHODS[r] for r in rows if r in METHODS])
        kind = param.type | None
        meta = {"choices": list(param.choices)} if param.choices else {}
        fields.append((name, kind, opt(None, help_text, check=param.check, **meta)))  # the row checks again
    cls = dataclasses.make_dataclass(f"{stage.capitalize()}MethodParams", fields, bases=(Options,), kw_only=True)
    cls.__doc__ = f"The method rows' own {stage} parameters (each applies to the rows named in its help)."
    return cls


def declared(stage: str) -> tuple[tuple[str, Param, tuple[str, ...]], ...]:
    """Every parameter read at ``stage`` that some row declares: (name, declaration, rows)."""
    found: dict[str, tuple[Param, list[str]]] = {}
    for method in METHODS.values():
        for param in method.params:
            if param.stage != stage:
                continue
            first, rows = found.setdefault(param.name, (param, []))
            if (first.type, first.choices, first.sets) != (param.type, param.choices, param.sets):
                raise SvdadaptError(f"method {method.name} declares parameter {param.name} unlike {rows[0]} does")
            rows.append(method.name)
    return tuple((name, param, tuple(rows)) for name, (param, rows) in found.items())


def method_params(stage: str):
    """The option group class of the parameters read at ``stage``, as the table stands now (for
    :func:`svdadapt.options.group`)."""
    return lambda: _group(stage, declared(stage))


def given(params: Any) -> dict[str, Any]:
    """The parameters given in a group made by :func:`method_params` (None: not given)."""
    return {k: v for k, v in flat_values(params).items() if v is not None}
