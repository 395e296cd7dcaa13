"""YAML configs and recipes: a mapping of option names to values, with dotted overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import SvdadaptError


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping; errors name the file and what is wrong."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SvdadaptError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SvdadaptError(f"{path} is not valid YAML{where}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SvdadaptError(f"{path} must hold a mapping of option names to values")
    return values
