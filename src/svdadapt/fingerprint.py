"""A cheap, stable identity for a model's weights: hashes names, shapes and a strided value sample."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

_SAMPLES_PER_TENSOR = 4096


@torch.no_grad()
def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter's name, shape and ≤4096 evenly strided values (as float32).

    Two models with the same architecture but different weights (another checkpoint, a residual
    base after CorDA) get different fingerprints; the cost is independent of model size.
    """
    digest = hashlib.sha256()
    for name, param in model.named_parameters(remove_duplicate=True):
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // _SAMPLES_PER_TENSOR)
        sample = flat[::step][:_SAMPLES_PER_TENSOR].to(device="cpu", dtype=torch.float32)
        digest.update(name.encode())
        digest.update(str(tuple(param.shape)).encode())
        digest.update(sample.numpy().tobytes())
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
