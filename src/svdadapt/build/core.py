"""Building adapters: decompose each target weight per the method row, initialise its adapter and
write the new frozen base weight into the model in place.

Layers of a wave are decomposed in parallel on CPU, one BLAS thread per worker (float64 GEMMs and
eigensolvers of this size scale poorly across threads; independent layers scale perfectly).
Only the r components a method takes are computed. Random initial values are drawn in model order
beforehand, so results never depend on scheduling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters.init import RandomInit, draw_random, init_layer
from ..adapters.state import AdapterSet, LayerAdapter
from ..decompose import DECOMPOSITIONS, Context, factorize, shared_contexts
from ..linalg import layer_pool, parallel_workers, single_threaded
from ..methods import Method
from ..targets import in_out_features, set_weight_matrix, weight_matrix
from .plan import LayerPlan
from .waves import Unit


def _build_layer(
    method: Method, name: str, plan: LayerPlan, contexts: Callable[[float], Context] | None, random: RandomInit, dtype
) -> tuple[LayerAdapter, torch.Tensor | None]:
    W = weight_matrix(plan.module)  # (out, in)
    factors = None
    if method.decomposition is not None:
        factors = factorize(W, contexts, name, want=(method.components, plan.rank))
    return init_layer(method, W, factors, plan.rank, plan.alpha, random, dtype)


def _cost(module: nn.Module) -> int:
    """Relative cost of a layer's decomposition, to hand the longest out first: the context product
    W·K, its Gram matrix and the eigensolver (about 4k³: its reduction is half matrix-vector work).
    On SmolLM2's layers it orders them as measured (down 95, gate/up 60, q/o 45, k/v 8 ms)."""
    in_f, out_f = in_out_features(module)
    k = min(in_f, out_f)
    return out_f * in_f * in_f + k * k * max(in_f, out_f) + 4 * k**3


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
    workers: int | None = None,
    progress: bool = True,
    put_base: Callable[[str, nn.Module, torch.Tensor], None] | None = None,
) -> AdapterSet:
    """Initialise every planned layer's adapter. New base weights (out, in) go to
    ``put_base(name, module, W)`` (e.g. a :class:`~.base_file.StreamedBase`), by default into the
    model in place."""
    put_base = put_base or (lambda _name, module, W: set_weight_matrix(module, W))
    generator = torch.Generator().manual_seed(seed)
    row = DECOMPOSITIONS[method.decomposition] if method.decomposition else None
    randoms = {name: draw_random(method, p.rank, in_out_features(p.module)[0], generator) for name, p in plan.items()}
    on_cpu = all(p.module.weight.device.type == "cpu" for p in plan.values())
    workers = workers or parallel_workers(on_cpu)
    built: dict[str, LayerAdapter] = {}

    def job(item: tuple[str, Callable[[float], Context] | None]) -> tuple[str, LayerAdapter]:
        name, contexts = item
        p = plan[name]
        adapter, new_base = _build_layer(method, name, p, contexts, randoms[name], adapter_dtype(p.module))
        if new_base is not None:
            put_base(name, p.module, new_base)  # layers are distinct: safe from parallel workers
        return name, adapter

    bar = tqdm(total=len(plan), desc=f"building {method.name}", unit="layer", disable=not progress)
    with bar, layer_pool(workers) as pool:
        for wave in waves:  # the wave source may run model forwards: full threads there
            items = []
            for unit in wave:
                contexts = shared_contexts(row, unit.statistic, unit.names[0]) if row else None
                items += [(name, contexts) for name in unit.names if name in plan]
            items.sort(key=lambda item: -_cost(plan[item[0]].module))  # longest first: balanced workers
            with single_threaded(workers > 1):
                results = list(pool.map(job, items))
            for name, adapter in results:
                built[name] = adapter
                bar.update(1)
    missing = [n for n in plan if n not in built]
    if missing:
        raise RuntimeError(f"no statistics reached {len(missing)} layers, e.g. {missing[0]}")
    conv1d = [n for n, p in plan.items() if type(p.module).__name__ == "Conv1D"]
    return AdapterSet(method.name, {n: built[n] for n in plan}, conv1d)
