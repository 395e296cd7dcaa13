"""Reading recipes (and `--config` files): a YAML mapping of option names to values, with dotted overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import SvdadaptError


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping; errors name the file and what is wrong."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SvdadaptError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SvdadaptError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except RecursionError:
        raise SvdadaptError(f"{path} is nested too deeply to be a recipe or config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SvdadaptError(f"{path} is not valid YAML{where}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SvdadaptError(f"{path} must hold a mapping of option names to values")
    return values


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.epochs=1", "model=default"]`` → nested mapping; values are read as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SvdadaptError(f"override {item!r} is not KEY=VALUE (e.g. train.epochs=1)")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.replace("-", "_").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SvdadaptError(f"override {item!r} goes below a value that is not a mapping")
        node[parts[-1]] = value
    return nested


def merge_mappings(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, recursively for nested mappings."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_mappings(merged[key], value)
        else:
            merged[key] = value
    return merged
