"""``svdadapt export``: a run's adapter as a PEFT LoRA for the untouched original model.

Residual methods (CorDA, PiSSA, MiLoRA) froze W − s·B₀A₀; KaSA froze W − U_d S_d V_dᵀ. In both the
run's model is W + s·B·diag·A − c·P·Q (see adapters/state.py), which is a LoRA of rank 2r on W:

    B' = [B·diag, −(c/s)·P],  A' = [A; Q],  scaling s

so stock PEFT on the original model reproduces the run exactly, with no residual base to ship.
LoRA runs export their adapter unchanged.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapters.peft_format import LoraFactors, write_peft_lora
from .atomic import atomic_directory
from .errors import SvdadaptError
from .fingerprint import body_fingerprint
from .models import load_model
from .options import opt
from .runs import Run, check_new_out, task_type_of


@dataclass(kw_only=True)
class ExportOptions:
    """Write a run's adapter as a stock PEFT LoRA that applies to the untouched original model (rank
    2r for residual and KaSA runs), so the run's outputs are reproduced without its residual base."""

    run: str = opt(help="run directory (from svdadapt build or train)", positional=True)
    out: str = opt(help="directory for the PEFT adapter")
    against_original: str | None = opt(
        None, "the original model the run was built from (checked by fingerprint): write a LoRA for it; "
        "without it, the adapter for the run's own base (residual or truncated) is written",
    )  # fmt: skip


def lora_against_original(run: Run) -> dict[str, LoraFactors]:
    layers = {}
    for name, a in run.adapters().layers.items():
        B, A = a.folded_B(), a.A
        if a.base_P is not None:
            ratio = a.base_scaling / a.scaling
            B = torch.cat([B.double(), -ratio * a.base_P.double()], dim=1).to(B.dtype)  # (out, r + q)
            A = torch.cat([A.double(), a.base_Q.double()], dim=0).to(A.dtype)  # (r + q, in)
        rank = A.shape[0]
        layers[name] = LoraFactors(A.contiguous(), B.contiguous(), a.scaling * rank)  # keeps alpha/r = s
    return layers


def export(opts: ExportOptions) -> Path:
    run = Run.open(opts.run)
    out = Path(opts.out).expanduser()
    check_new_out(out, "exported adapter")
    if opts.against_original is None:
        with atomic_directory(out) as tmp:
            shutil.copytree(run.path / "adapter", tmp, dirs_exist_ok=True)
        return out
    head = run.meta.get("head", "auto")
    extra = {"num_labels": run.meta["num_labels"]} if head == "seq-cls" else {}
    original = load_model(opts.against_original, head=head, **extra)
    if body_fingerprint(original.model) != run.meta["original"]["body_fingerprint"]:
        raise SvdadaptError(
            f"{opts.against_original} is not the model {run.path} was built from "
            f"({run.meta['original']['name']}); pass that model to --against-original"
        )
    with atomic_directory(out) as tmp:
        write_peft_lora(
            tmp,
            lora_against_original(run),
            original.location,
            fan_in_fan_out=bool(run.meta.get("conv1d")),
            task_type=task_type_of(original.model),
            dropout=run.meta.get("dropout", 0.0),
            modules_to_save=run.head_state() or None,
        )
    return out
