"""Which layers of a model are adapted: linear-like modules chosen by PEFT-style patterns.

A pattern list works like PEFT's ``target_modules``: an item matches a module whose full name equals
it or ends with ``.<item>``; an item written ``re:<regex>`` matches names the regex fully matches.
The default is every linear layer inside the model's repeated blocks (decoder or encoder layers),
never the output head.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .errors import SvdadaptError
from .options import Check, opt

LINEAR_TYPES = (nn.Linear, Conv1D)


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2 style, weight stored as (in, out))."""
    return isinstance(module, LINEAR_TYPES)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as an (out, in) matrix view, whatever its storage layout."""
    if isinstance(module, Conv1D):
        return module.weight.T  # Conv1D stores (in, out)
    return module.weight


def stored_weight(module: nn.Module, matrix: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """An (out, in) matrix as the layer stores its weight: layout, dtype and (default) device."""
    weight = module.weight
    value = matrix.T if isinstance(module, Conv1D) else matrix
    return value.to(dtype=weight.dtype, device=weight.device if device is None else device)


def set_weight_matrix(module: nn.Module, matrix: torch.Tensor) -> None:
    """Overwrite the layer's weight from an (out, in) matrix, cast to the layer's dtype once."""
    with torch.no_grad():
        module.weight.copy_(stored_weight(module, matrix))


def in_out_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a linear-like layer (a 4-bit layer's weight is packed: its
    declared features count)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    out_f, in_f = weight_matrix(module).shape
    return in_f, out_f


def parse_patterns(text: str | Sequence[str] | None) -> list[str] | None:
    """Turn ``"q_proj,v_proj"`` or a list into a pattern list; ``None``/empty means the default."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [item.strip() for item in items if item and item.strip()]
    return items or None


def check_patterns(patterns: Sequence[str], what: str) -> None:
    """A one-line error for a ``re:`` pattern that is no valid regex (``what``: the flag, for messages)."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as exc:
                raise SvdadaptError(f"{what} pattern {pattern!r} is not a valid regex: {exc}") from None


def targets_option(verb: str = "adapt") -> str | None:
    """The ``--targets`` option of every command that chooses layers (calibrate, build, compress),
    its patterns checked with the options."""
    valid = Check(lambda text: _valid(parse_patterns(text) or []), "has a re: pattern that is no valid regex")
    return opt(
        None, f"layers to {verb}: name suffixes or re:REGEX, comma-separated (default: every linear layer in "
        "the model's blocks, not the head)", check=valid, listed=True,
    )  # fmt: skip


def _valid(patterns: list[str]) -> bool:
    try:
        check_patterns(patterns, "")
    except SvdadaptError:
        return False
    return True


def pattern_matches(pattern: str, name: str) -> bool:
    """Does one pattern (suffix name or ``re:<regex>``) select the module called ``name``?"""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or name.endswith("." + pattern)


def block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """The model's top-level stacks of repeated blocks (e.g. ``model.layers``, ``encoder.layer``).

    A stack is an ``nn.ModuleList`` of at least two modules of one class that hold linear layers and
    is not nested inside another such stack (so MoE expert lists inside a block do not count).
    """
    found: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if not any(is_linear(m) for m in module[0].modules()):
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue
        found.append((name, module))
    return found


def default_target_names(model: nn.Module) -> list[str]:
    """Every linear layer inside the model's block stacks, in module order."""
    prefixes = [name + "." for name, _ in block_lists(model)]
    return [
        name
        for name, module in model.named_modules()
        if is_linear(module) and any(name.startswith(p) for p in prefixes)
    ]


def find_targets(model: nn.Module, patterns: str | Sequence[str] | None = None) -> dict[str, nn.Module]:
    """Resolve patterns to ``{module name: module}`` in model order; raise if nothing matches."""
    patterns = parse_patterns(patterns)
    if patterns is None:
        names = default_target_names(model)
        if not names:
            raise SvdadaptError(
                "could not find repeated blocks with linear layers in this model; name the layers to "
                "adapt with --targets (e.g. --targets q_proj,v_proj)"
            )
        modules = dict(model.named_modules())
        return {name: modules[name] for name in names}
    check_patterns(patterns, "--targets")
    chosen = {
        name: module
        for name, module in model.named_modules()
        if is_linear(module) and any(pattern_matches(p, name) for p in patterns)
    }
    if not chosen:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if is_linear(m)})
        raise SvdadaptError(
            f"target patterns {','.join(patterns)} match no linear layer of this model; "
            f"its linear layers end in: {', '.join(suffixes[:20])}"
        )
    return chosen
