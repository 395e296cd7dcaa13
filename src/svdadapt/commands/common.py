"""What several commands' options share: help texts and the result protocol."""

from __future__ import annotations

from typing import Protocol

MODEL_HELP = "local model directory, hub id, `default` (SmolLM2-135M-Instruct) or `default-encoder` (all-MiniLM-L6-v2)"
DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when available)"


class Result(Protocol):
    """What every command returns: a summary for people (what it hands to later pipeline stages is its
    command row's, known from its options)."""

    def summary(self) -> str:
        """A few lines saying what was done and where it went (the CLI prints them)."""
        ...
