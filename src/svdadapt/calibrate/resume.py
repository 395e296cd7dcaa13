"""A resumable point of a whole-model calibration pass: batches consumed and every group's sums."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .capture import InputCapture


@dataclass
class FullPassState:
    """Batches consumed, the layer → group map and every group's running sums (full matrices)."""

    batches_done: int = 0
    samples_done: int = 0
    group_of: dict[str, str] = field(default_factory=dict)
    sums: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def snapshot(capture: InputCapture, batches_done: int, samples_done: int) -> FullPassState:
    return FullPassState(
        batches_done=batches_done,
        samples_done=samples_done,
        group_of=dict(capture.group_of),
        sums={key: g.sums.checkpoint() for key, g in capture.groups.items()},
    )


def restore(capture: InputCapture, state: FullPassState) -> None:
    """Recreate the groups of ``state`` (leaders first) in ``capture`` and load their sums."""
    modules = capture.modules
    for name, key in state.group_of.items():
        if key == name:
            capture.join(name, key, modules[name])
    for name, key in state.group_of.items():
        if key != name:
            capture.join(name, key, modules[name])
    for key, tensors in state.sums.items():
        capture.groups[key].sums.load_state(tensors)
