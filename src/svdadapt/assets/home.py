"""Where svdadapt keeps converted models and parsed texts: ``$SVDADAPT_HOME`` or ``~/.cache/svdadapt``."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ..errors import SvdadaptError


def svdadapt_home() -> Path:
    return Path(os.environ.get("SVDADAPT_HOME", Path.home() / ".cache" / "svdadapt")).expanduser()


def package_dir(package: str, install_hint: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SvdadaptError(f"package {package} is not installed; {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))
