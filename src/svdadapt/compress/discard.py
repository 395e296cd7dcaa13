"""How many of each layer's smallest components a sweep point drops: a count, or a fraction of k.

``--discard 0,16,0.1,25%`` gives four points: none, 16 components of every layer, and 10% / 25% of
each layer's k = min(out, in) (rounded half up). A point must leave every layer at least one
component: a count below the smallest k of the targets, a fraction below 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import SvdadaptError


@dataclass(frozen=True)
class Discard:
    """One sweep point: ``count`` components per layer, or ``fraction`` of each layer's k."""

    text: str  # as the user wrote it
    count: int | None = None
    fraction: float | None = None

    def rank(self, k: int) -> int:
        """Components dropped from a layer with k = min(out, in)."""
        if self.count is not None:
            return self.count
        return math.floor(self.fraction * k + 0.5)

    @property
    def is_zero(self) -> bool:
        return (self.count or self.fraction or 0) == 0

    @property
    def label(self) -> str:
        return str(self.count) if self.count is not None else f"{self.fraction * 100:g}%"


def _parse_one(item: str) -> Discard:
    text = item.strip()
    if not text:
        raise SvdadaptError("--discard has an empty item; give counts or fractions, e.g. 0,0.1,0.25,0.5")
    percent = text.endswith("%")
    number = text[:-1].strip() if percent else text
    try:
        value = float(number) if percent or any(c in number for c in ".eE") else int(number)
    except ValueError:
        raise SvdadaptError(
            f"--discard item {text!r} is not a count (e.g. 16) or a fraction (e.g. 0.25 or 25%)"
        ) from None
    if percent:
        value /= 100
    if not math.isfinite(value) or value < 0:
        raise SvdadaptError(f"--discard item {text!r} is negative; give a count or fraction ≥ 0")
    if isinstance(value, int):
        return Discard(text, count=value)
    if value >= 1:
        raise SvdadaptError(
            f"--discard fraction {text!r} is not below 1: it would drop every component (use counts without a dot)"
        )
    return Discard(text, fraction=value)


def _key(point: Discard) -> tuple:
    return (0, None) if point.is_zero else (point.count, point.fraction)


def parse_discards(text: str) -> list[Discard]:
    """Parse ``--discard`` (comma-separated); repeated points are kept once, in the order given."""
    points: list[Discard] = []
    for item in text.split(","):
        point = _parse_one(item)
        if all(_key(point) != _key(p) for p in points):
            points.append(point)
    return points


def layer_ranks(points: list[Discard], ks: dict[str, int]) -> list[dict[str, int]]:
    """Per point, {layer: r}; every r must be below that layer's k."""
    ranks = []
    for point in points:
        chosen = {name: point.rank(k) for name, k in ks.items()}
        for name, r in chosen.items():
            if r >= ks[name]:
                raise SvdadaptError(
                    f"--discard {point.text} drops {r} components of {name}, which has only "
                    f"min(out, in) = {ks[name]}; discard fewer (at most {ks[name] - 1}) or use a fraction"
                )
        ranks.append(chosen)
    return ranks
