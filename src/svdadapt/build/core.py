"""Building adapters: decompose each target weight per the method row, initialise its adapter and
hand the new frozen base weight over (by default into the model in place).

The layers of a wave are decomposed by the back end's layer pool (side by side on CPU cores). Only
the r components a method takes are computed. Random initial values are drawn in model order
beforehand, so results never depend on scheduling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import backend
from ..adapters.init import INITS, LayerInit, RandomInit, draw_random
from ..adapters.state import AdapterSet, LayerAdapter
from ..decompose import DECOMPOSITIONS, Context, factorize, shared_contexts
from ..methods import Method
from ..targets import in_out_features, set_weight_matrix, weight_matrix
from .plan import LayerPlan
from .waves import Unit


def _build_layer(
    method: Method, name: str, plan: LayerPlan, contexts: Callable[[float], Context] | None, random: RandomInit, dtype
) -> tuple[LayerAdapter, torch.Tensor | None]:
    W = weight_matrix(plan.module)  # (out, in)
    taken = factorize(W, contexts, name, want=(method.take, plan.rank)) if method.decomposition else None
    layer = LayerInit(W, taken, plan.rank, plan.alpha, random, dtype, method.base)
    return INITS[method.init].make(layer)


def adapter_dtype(module: nn.Module) -> torch.dtype:
    """float32 adapters on half-precision bases (as PEFT's autocast_adapter_dtype), else the base's."""
    dtype = module.weight.dtype
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@torch.no_grad()
def build_adapters(
    method: Method,
    plan: dict[str, LayerPlan],
    waves: Iterable[list[Unit]],
    seed: int = 0,
    progress: bool = True,
    put_base: Callable[[str, nn.Module, torch.Tensor], None] | None = None,
) -> AdapterSet:
    """Initialise every planned layer's adapter. New base weights (out, in) go to
    ``put_base(name, module, W)`` (e.g. a :class:`~.base_file.StreamedBase`), by default into the
    model in place."""
    put_base = put_base or (lambda _name, module, W: set_weight_matrix(module, W))
    generator = torch.Generator().manual_seed(seed)
    row = DECOMPOSITIONS[method.decomposition] if method.decomposition else None
    randoms = {
        name: draw_random(method.init, method.diag, p.rank, in_out_features(p.module)[0], generator)
        for name, p in plan.items()
    }
    device = next(iter(plan.values())).module.weight.device if plan else "cpu"
    built: dict[str, LayerAdapter] = {}

    def job(name: str, contexts: Callable[[float], Context] | None) -> backend.LayerJob[LayerAdapter]:
        p = plan[name]

        def run() -> LayerAdapter:
            adapter, new_base = _build_layer(method, name, p, contexts, randoms[name], adapter_dtype(p.module))
            if new_base is not None:
                put_base(name, p.module, new_base)  # layers are distinct: safe from parallel workers
            return adapter

        return backend.LayerJob(name, tuple(weight_matrix(p.module).shape), run)

    bar = tqdm(total=len(plan), desc=f"building {method.name}", unit="layer", disable=not progress)
    with bar, backend.on(device).layer_pool() as pool:
        for wave in waves:  # the wave source may run model forwards: full threads there
            jobs = []
            for unit in wave:
                contexts = shared_contexts(row, unit.statistic, unit.names[0]) if row else None
                jobs += [job(name, contexts) for name in unit.names if name in plan]
            for name, adapter in pool.map(jobs):
                built[name] = adapter
                bar.update(1)
    missing = [n for n in plan if n not in built]
    if missing:
        raise RuntimeError(f"no statistics reached {len(missing)} layers, e.g. {missing[0]}")
    conv1d = [n for n, p in plan.items() if type(p.module).__name__ == "Conv1D"]
    return AdapterSet(method.name, {n: built[n] for n in plan}, conv1d)
