"""Which device a process computes on: ``--device`` as given, or its own accelerator."""

from __future__ import annotations

import os

import torch

from ..errors import SvdadaptError


def resolve_device(device: str | None) -> str:
    """``--device`` as given (checked), or this process's default; a one-line error if unusable."""
    device = device or default_device()
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SvdadaptError(f"unknown --device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SvdadaptError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


def default_device() -> str:
    """The default device of this process: its own GPU under a launcher, else cuda or cpu."""
    if not torch.cuda.is_available():
        return "cpu"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cuda"
