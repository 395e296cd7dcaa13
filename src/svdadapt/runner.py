"""Running a model forward (calibration, streamed blocks): the cheapest module that still reaches every target."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from torch import nn

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def forward_module(model: nn.Module, target_names: list[str]) -> tuple[nn.Module, str]:
    """The model body (no LM/classification head) when it holds every target, else the model.

    Returns the module and its name prefix inside ``model`` ("" for the model itself).
    """
    prefix = getattr(model, "base_model_prefix", "")
    body = getattr(model, prefix, None) if prefix else None
    if isinstance(body, nn.Module) and body is not model and all(n.startswith(prefix + ".") for n in target_names):
        return body, prefix
    return model, ""


def model_inputs(module: nn.Module, batch: Mapping[str, torch.Tensor], device: torch.device) -> dict:
    """The batch's tensors that ``module.forward`` takes, on ``device``, with caching off."""
    params = inspect.signature(module.forward).parameters
    inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_INPUT_KEYS and (k in params)}
    if "use_cache" in params:
        inputs["use_cache"] = False
    return inputs


def module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def batch_samples(batch: Mapping[str, torch.Tensor]) -> int:
    return int(batch["input_ids"].shape[0])


def positions_to_keep(model: nn.Module, wanted: torch.Tensor) -> torch.Tensor | None:
    """The positions (k,) where ``wanted`` (b, L) holds in some row, for a model that can run its
    vocabulary-wide head at chosen positions only (transformers' ``logits_to_keep``); None when it
    cannot, or when nothing is wanted."""
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return None
    keep = wanted.any(dim=0).nonzero().squeeze(1)  # (k,)
    return keep if keep.numel() else None
