"""Putting adapters into a model and taking them out: inject, merge, unmerge, unload."""

from __future__ import annotations

from torch import nn

from ..errors import SvdadaptError
from .module import AdapterLinear
from .state import AdapterSet


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def adapter_layers(model: nn.Module) -> dict[str, AdapterLinear]:
    """``{target name: AdapterLinear}`` (names as before injection)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def inject(
    model: nn.Module, adapters: AdapterSet, name: str = "default", dropout: float = 0.0
) -> dict[str, AdapterLinear]:
    """Wrap each layer of ``adapters`` (or add to its existing wrapper) and freeze everything else.

    Only the adapters' A (unless frozen), B (and ΔΣ) stay trainable.
    """
    modules = dict(model.named_modules())
    wrapped = {}
    for layer, state in adapters.layers.items():
        if layer not in modules:
            raise SvdadaptError(f"the model has no layer {layer}; was the run built from another model?")
        module = modules[layer]
        if not isinstance(module, AdapterLinear):
            module = AdapterLinear(module)
            _set_module(model, layer, module)
        if name in module.adapters:
            raise SvdadaptError(f"{layer} already has an adapter named {name!r}")
        module.add(name, state, dropout)
        wrapped[layer] = module
    for pname, param in model.named_parameters():
        param.requires_grad_(".adapters." in pname)
    for module in wrapped.values():
        for adapter in module.adapters.values():
            if adapter.frozen_A:
                adapter.lora_A.weight.requires_grad_(False)
    return wrapped


def adapter_state(model: nn.Module, method: str, name: str = "default") -> AdapterSet:
    """The current values of adapter ``name`` in every wrapped layer."""
    layers = {layer: m.adapters[name].state() for layer, m in adapter_layers(model).items() if name in m.adapters}
    conv1d = [layer for layer, m in adapter_layers(model).items() if type(m.base_layer).__name__ == "Conv1D"]
    return AdapterSet(method, layers, [c for c in conv1d if c in layers])


def merge(model: nn.Module) -> None:
    for module in adapter_layers(model).values():
        module.merge()


def unmerge(model: nn.Module) -> None:
    for module in adapter_layers(model).values():
        module.unmerge()


def unload(model: nn.Module, restore_base: bool = True) -> nn.Module:
    """Remove every adapter; with ``restore_base`` the original weights come back (undoing residual
    bases and KaSA's truncation), else the frozen base stays as built. Returns the model."""
    for layer, module in adapter_layers(model).items():
        module.unmerge()
        if restore_base:
            module.restore_base()
        _set_module(model, layer, module.base_layer)
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold all adapters into their base weights and remove the wrappers: a dense model."""
    for layer, module in adapter_layers(model).items():
        module.merge()
        _set_module(model, layer, module.base_layer)
    return model
