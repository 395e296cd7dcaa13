"""Which layers get an adapter, with which rank and alpha (PEFT-style rank/alpha patterns)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ..errors import SvdadaptError
from ..targets import check_patterns, in_out_features, pattern_matches


@dataclass
class LayerPlan:
    module: nn.Module
    rank: int
    alpha: float


def parse_assignments(text: str | None, flag: str, cast=float) -> list[tuple[str, float]]:
    """``"q_proj=8,re:.*down_proj=32"`` → [("q_proj", 8.0), ("re:.*down_proj", 32.0)], in order."""
    if not text:
        return []
    pairs = []
    for item in text.split(","):
        pattern, sep, value = item.strip().rpartition("=")
        if not sep or not pattern:
            raise SvdadaptError(f"{flag} wants PATTERN=VALUE items separated by commas, got {item!r}")
        try:
            number = cast(value)
        except ValueError:
            raise SvdadaptError(f"{flag}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise SvdadaptError(f"{flag}: {value!r} is not a finite number")
        pairs.append((pattern, number))
    check_patterns([p for p, _ in pairs], flag)
    return pairs


def _lookup(pairs: list[tuple[str, float]], name: str, default: float) -> float:
    for pattern, value in pairs:
        if pattern_matches(pattern, name):
            return value
    return default


def plan_layers(
    targets: dict[str, nn.Module],
    rank: int,
    alpha: float | None,
    rank_pattern: str | None = None,
    alpha_pattern: str | None = None,
) -> dict[str, LayerPlan]:
    """Per-layer rank and alpha, validated: 1 ≤ r < min(in, out) and alpha > 0 everywhere."""
    ranks = parse_assignments(rank_pattern, "--rank-pattern", int)
    alphas = parse_assignments(alpha_pattern, "--alpha-pattern", float)
    for flag, pairs in (("--rank-pattern", ranks), ("--alpha-pattern", alphas)):
        for pattern, _ in pairs:
            if not any(pattern_matches(pattern, name) for name in targets):
                raise SvdadaptError(
                    f"{flag} pattern {pattern!r} matches none of the {len(targets)} target layers "
                    f"(e.g. {next(iter(targets), 'none')}); patterns are name suffixes or re:REGEX"
                )
    plan = {}
    for name, module in targets.items():
        r = int(_lookup(ranks, name, rank))
        a = float(_lookup(alphas, name, alpha if alpha is not None else r))
        if r < 1:
            raise SvdadaptError(f"rank must be at least 1, got {r} for {name}")
        if not a > 0:
            raise SvdadaptError(f"alpha must be positive, got {a} for {name}")
        in_f, out_f = in_out_features(module)
        if r >= min(in_f, out_f):
            raise SvdadaptError(
                f"rank {r} is not below min(in, out) = {min(in_f, out_f)} of {name} ({in_f} -> {out_f}); "
                f"lower --rank or exclude that layer with --targets / --rank-pattern"
            )
        plan[name] = LayerPlan(module, r, a)
    return plan
