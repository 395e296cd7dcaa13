"""A cheap, stable identity for a model's weights: hashes names, shapes and a strided value sample."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from . import backend

_WINDOWS, _WINDOW = 16, 256  # values sampled per tensor: 16 evenly spaced runs of 256


@torch.no_grad()
def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter's name, shape and 4096 sampled values (as float32): 16 evenly
    spaced runs of 256 consecutive values (all values of smaller tensors).

    Two models with the same architecture but different weights (another checkpoint, a residual
    base after CorDA) get different fingerprints; the cost is independent of model size, and runs
    of consecutive values read a few pages per tensor, not every page of a memory-mapped model (the
    page cache may map in far more around each: those go back to the OS after each tensor).
    """
    digest = hashlib.sha256()
    for name, param in model.named_parameters(remove_duplicate=True):
        flat = param.detach().reshape(-1)
        if flat.numel() > _WINDOWS * _WINDOW:
            last = flat.numel() - _WINDOW
            starts = torch.tensor([i * last // (_WINDOWS - 1) for i in range(_WINDOWS)])  # (16,), exact integers
            flat = flat[(starts[:, None] + torch.arange(_WINDOW)).reshape(-1).to(flat.device)]  # (4096,)
        digest.update(name.encode())
        digest.update(str(tuple(param.shape)).encode())
        digest.update(flat.to(device="cpu", dtype=torch.float32).numpy().tobytes())
        backend.hand_back(param)  # the file pages the sample mapped in
    return digest.hexdigest()


def model_identity(model: nn.Module) -> dict:
    """Name, architecture and weights fingerprint of a model."""
    config = getattr(model, "config", None)
    return {
        "name": getattr(config, "_name_or_path", None) or type(model).__name__,
        "architecture": (getattr(config, "architectures", None) or [type(model).__name__])[0],
        "fingerprint": weights_fingerprint(model),
    }


def body_fingerprint(model: nn.Module) -> str:
    """Fingerprint of the model body only (no LM or classification head): identifies the original
    model a run was built from, whatever head it is loaded with."""
    body = getattr(model, "base_model", model)
    return weights_fingerprint(body if isinstance(body, nn.Module) else model)
