"""A stage of a pipeline: one command with its checked options, the path it writes, and what it hands
to later stages (its command's row declares both from the options, so a whole pipeline is known
before its first stage runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..commands import Command
from ..options import from_mapping


@dataclass
class Stage:
    name: str  # how messages and the journal name it: the command's name, or e.g. "train lora"
    command: Command
    options: Any  # checked: what it runs with
    path: str = ""  # what it writes ("" when nothing)

    @classmethod
    def of(cls, name: str, command: Command, values: dict[str, Any], where: str) -> Stage:
        """The stage with ``values`` (flag names) checked as its command's options; errors name ``where``."""
        options = from_mapping(command.options, values, f"{where}: {name}")
        return cls(name, command, options, command.writes(options) or "")

    @property
    def hands_over(self) -> dict[str, str]:
        """Option values for later stages, e.g. ``{"covariances": path}``."""
        return self.command.hands_over(self.options)


@dataclass
class Kept:
    """A stage an earlier run of the pipeline finished, kept by --resume."""

    name: str

    def summary(self) -> str:
        return f"{self.name}: kept from the earlier run (the same options and inputs)"
