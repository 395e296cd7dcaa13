"""``svdadapt merge``: fold a run's adapter into its base → an ordinary dense model directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_directory
from .options import opt
from .runs import Run, check_new_out
from .targets import set_weight_matrix, weight_matrix


@dataclass(kw_only=True)
class MergeOptions:
    """Fold a run's adapter (built or trained) into its frozen base and write an ordinary transformers
    model directory that needs neither svdadapt nor PEFT."""

    run: str = opt(help="run directory (from svdadapt build or train)", positional=True)
    out: str = opt(help="directory for the merged model")
    device: str = opt("cpu", "device to merge on")


@torch.no_grad()
def merge_into(model: torch.nn.Module, run: Run) -> None:
    """Add every layer's ΔW = s·B·diag·A to ``model``'s weights (float64 sum, cast once)."""
    modules = dict(model.named_modules())
    for name, adapter in run.adapters().layers.items():
        module = modules[name]
        W = weight_matrix(module).double()
        set_weight_matrix(module, W + adapter.delta().to(W.device))
    for name, state in run.head_state().items():  # a trained classification head
        modules[name].load_state_dict(state)


def merge(opts: MergeOptions) -> Path:
    run = Run.open(opts.run)
    out = Path(opts.out).expanduser()
    check_new_out(out, "merged model")
    loaded = run.load_base(device=opts.device)
    merge_into(loaded.model, run)
    with atomic_directory(out) as tmp:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
    return out
