"""How a calibration pass runs: dtypes, devices, progress, and where it resumes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backend import Launch, Placement
from .resume import FullPassState


@dataclass
class PassSettings:
    """Everything a calibration driver needs besides the model, the batches and the targets."""

    accumulate_dtype: torch.dtype = torch.float64  # running sums
    store_dtype: torch.dtype = torch.float32  # the covariances handed over (means)
    sums_device: torch.device | str | None = None  # where sums live (default: where the layer runs)
    exec_device: torch.device | str | None = None  # block-wise: where blocks run (default: the model's)
    placement: Placement | None = None  # block-wise: where weights live and blocks run (overrides exec_device)
    hidden_dir: str | Path | None = None  # block-wise: keep hidden states in memory-mapped files there
    progress: bool = True
    total_samples: int | None = None  # for the progress bar
    start_block: int = 0  # block-wise resume: blocks before it only pass their hidden states on
    resume: FullPassState | None = None  # whole-model resume: the sums and position to start from
    on_checkpoint: Callable[[FullPassState], None] | None = None  # whole-model: save a resumable point
    checkpoint_seconds: float = 120.0  # whole-model: seconds between checkpoints
    launch: Launch = field(default_factory=Launch)  # the processes sharing the batches (default: this one)
