"""Writing and reading adapters as stock PEFT LoRA checkpoints (adapter_config.json +
adapter_model.safetensors), loadable with ``peft.PeftModel.from_pretrained``.

Configs are always plain LoRA (``init_lora_weights: true``): a config naming CorDA or KaSA would
make PEFT re-run their initialisation on load. Per-layer ranks and alphas that differ from the
most common ones go into ``rank_pattern`` / ``alpha_pattern`` keyed by full module names.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import write_json, write_safetensors
from ..decompose import factorize, identity_context
from ..errors import SvdadaptError
from ..factors import Take
from ..files import load_tensors, read_json
from .state import AdapterSet

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


@dataclass
class LoraFactors:
    """ΔW = (alpha / r) · B · A for one layer."""

    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])


def _most_common(values: list) -> object:
    return Counter(values).most_common(1)[0][0]


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def write_peft_lora(
    directory: Path,
    layers: dict[str, LoraFactors],
    base_model: str | None,
    fan_in_fan_out: bool = False,
    task_type: str | None = None,
    dropout: float = 0.0,
    modules_to_save: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """Write ``layers`` as a PEFT LoRA checkpoint into ``directory`` (created if needed).

    ``modules_to_save`` maps a module name (e.g. a classification head) to its full state dict.
    """
    r = _most_common([f.rank for f in layers.values()])
    alpha = _most_common([f.alpha for f in layers.values()])
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": _number(alpha),
        "target_modules": list(layers),
        "rank_pattern": {n: f.rank for n, f in layers.items() if f.rank != r},
        "alpha_pattern": {n: _number(f.alpha) for n, f in layers.items() if f.alpha != alpha},
        "lora_dropout": dropout,
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": list(modules_to_save) if modules_to_save else None,
        "inference_mode": True,
    }
    tensors = {}
    for name, f in layers.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = f.A
        tensors[f"{PREFIX}{name}.lora_B.weight"] = f.B
    for module, state in (modules_to_save or {}).items():
        for key, value in state.items():
            tensors[f"{PREFIX}{module}.{key}"] = value  # PEFT strips "modules_to_save.<adapter>." on save
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / WEIGHTS_FILE, tensors, metadata={"format": "pt"})
    write_json(directory / CONFIG_FILE, config)


def read_peft_lora(directory: Path) -> tuple[dict, dict[str, LoraFactors]]:
    """The config and per-layer factors of a PEFT LoRA checkpoint (patterns must be full names)."""
    config_file, weights_file = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_file.is_file() or not weights_file.is_file():
        raise SvdadaptError(f"{directory} is not a PEFT adapter ({CONFIG_FILE} and {WEIGHTS_FILE} expected)")
    fix = "write the adapter again"
    config = read_json(config_file, "PEFT adapter config", fix)
    if config.get("peft_type") != "LORA":
        raise SvdadaptError(f"{directory} holds a {config.get('peft_type')} adapter, not LoRA")
    tensors = load_tensors(weights_file, "PEFT adapter weights", fix)
    layers = {}
    for key, A in tensors.items():
        if not key.endswith(".lora_A.weight"):
            continue
        name = key[len(PREFIX) : -len(".lora_A.weight")]
        alpha = config.get("alpha_pattern", {}).get(name, config["lora_alpha"])
        layers[name] = LoraFactors(A, tensors[f"{PREFIX}{name}.lora_B.weight"], float(alpha))
    return config, layers


def lora_on_base(adapters: AdapterSet) -> dict[str, LoraFactors]:
    """The current adapter as a plain LoRA on the run's own base (KaSA's ΔΣ folded into B)."""
    return {name: LoraFactors(a.A, a.folded_B(), a.alpha) for name, a in adapters.layers.items()}


def lora_on_original(adapters: AdapterSet) -> dict[str, LoraFactors]:
    """The run as a LoRA on the untouched original weight. Residual and truncating methods froze
    W − c·P·Q, so the run's model is W + s·B·diag·A − c·P·Q: a LoRA of rank r + q on W,

        B' = [B·diag, −(c/s)·P],  A' = [A; Q],  scaling s (alpha' = s · (r + q)).

    Methods that kept W export their adapter unchanged."""
    layers = {}
    for name, a in adapters.layers.items():
        B, A = a.folded_B(), a.A
        if a.base_P is not None:
            ratio = a.base_scaling / a.scaling
            B = torch.cat([B.double(), -ratio * a.base_P.double()], dim=1).to(B.dtype)  # (out, r + q)
            A = torch.cat([A.double(), a.base_Q.double()], dim=0).to(A.dtype)  # (r + q, in)
        layers[name] = LoraFactors(A.contiguous(), B.contiguous(), a.scaling * A.shape[0])  # keeps alpha/r = s
    return layers


def nearest_lora(D: torch.Tensor, rank: int, scaling: float, dtype: torch.dtype) -> tuple[LoraFactors, float]:
    """The best rank-``rank`` LoRA (Eckart–Young, float64 SVD) for a weight difference D (out, in),
    at LoRA scaling ``scaling``, and what it leaves, ‖D − s·B·A‖_F."""
    D = D.to(torch.float64)
    rank = min(rank, *D.shape)
    top = factorize(D, lambda _: identity_context(), "difference", want=(Take.TOP, rank))
    half = (top.S / scaling).clamp_min(0).sqrt()  # (k,)
    B, A = top.U * half, half[:, None] * top.V.T  # (out, k), (k, in)
    left = float((D - scaling * (B @ A)).norm())
    return LoraFactors(A.to(dtype).contiguous(), B.to(dtype).contiguous(), scaling * rank), left
