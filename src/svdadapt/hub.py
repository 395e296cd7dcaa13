"""Reaching the Hugging Face hub, or saying plainly that it cannot be reached."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse

from .errors import SvdadaptError


def offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "HF_DATASETS_OFFLINE", "0"
    ).lower() in ("1", "true", "yes")


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Can a TCP connection to the hub endpoint be opened within ``timeout`` seconds?"""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(what: str, suggestion: str) -> None:
    """Raise a one-line error naming ``what`` and ``suggestion`` when the hub cannot be used.

    With ``HF_HUB_OFFLINE=1`` nothing is checked: the caller reads the local hub cache.
    """
    if offline_requested():
        return
    if not hub_reachable():
        raise SvdadaptError(
            f"cannot reach the Hugging Face hub to fetch {what} (this machine looks offline); {suggestion}"
        )
