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
from ..adapters.init import INITS, LayerInit, RandomInit, base_without, draw_random
from ..adapters.state import AdapterSet, LayerAdapter
from ..atomic import require_finite
from ..decompose import DECOMPOSITIONS, Decomposer
from ..methods import Method
from ..targets import in_out_features, set_weight_matrix, weight_matrix
from .allocate import allocate_ranks
from .plan import LayerPlan
from .quantized import Quantization, SharedInputs, quantize_layer
from .waves import Unit, decompose_waves


def _build_layer(
    method: Method,
    name: str,
    plan: LayerPlan,
    decompose: Decomposer | None,
    random: RandomInit,
    dtype: torch.dtype,
    compute: torch.device,
) -> LayerAdapter:
    W = weight_matrix(plan.module).to(compute)  # (out, in)
    taken = decompose(W, name, (method.take, plan.rank)) if decompose else None
    layer = LayerInit(W, taken, plan.rank, plan.alpha, random, dtype, method.base, method.stage_values("build"))
    adapter = INITS[method.init].make(layer)
    adapter.frozen_A = method.freeze_a
    return adapter


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
    launch: backend.Launch | None = None,
    compute: torch.device | str | None = None,
    release: Callable[[torch.Tensor], None] | None = None,
    quantization: Quantization | None = None,
    errors: dict[str, dict] | None = None,
) -> AdapterSet:
    """Initialise every planned layer's adapter. New base weights (out, in) go to
    ``put_base(name, module, W)`` (e.g. a run's base writer), by default into the model in place.
    Decompositions and the new bases are computed on ``compute`` (default: where the weights are;
    an offloaded model's weights go there one layer at a time); the adapters end where the weights
    live. ``release`` gets each layer's weight once the layer is done (e.g. to hand its mapped
    pages back).

    In one process (``launch``'s default) each layer's base is written by the job that decomposed
    it; in a launch of several the layers are shared out, and only the writer computes new bases:
    its own layers', then the others' from the adapters they hand back.

    With ``quantization`` every layer bitsandbytes quantizes gets a quantized base and the adapter
    chosen for it (:mod:`svdadapt.build.quantized`), its errors going into ``errors`` by layer."""
    put_base = put_base or (lambda _name, module, W: set_weight_matrix(module, W))
    launch = launch or backend.Launch()
    if method.ranks is not None:  # ranks that depend on every layer's spectrum: decided first
        plan, waves = allocate_ranks(method, plan, waves)
    generator = torch.Generator().manual_seed(seed)
    row = DECOMPOSITIONS[method.decomposition] if method.decomposition else None
    randoms = {
        name: draw_random(method.init, method.diag, p.rank, in_out_features(p.module)[0], generator)
        for name, p in plan.items()
    }
    home = next(iter(plan.values())).module.weight.device if plan else torch.device("cpu")
    device = torch.device(compute) if compute is not None else home
    built: dict[str, LayerAdapter] = {}
    written: set[str] = set()

    inputs = SharedInputs()  # the quantized init's input covariances, until each layer is written

    def write(name: str, adapter: LayerAdapter) -> LayerAdapter:
        module = plan[name].module
        W = weight_matrix(module).to(device)  # (out, in)
        new_base = base_without(W, adapter) if launch.writer else None
        covariance, root = inputs.take(name)
        if launch.writer and quantization is not None and backend.quantizable(module, quantization.kind):
            quantized = quantize_layer(quantization, method, W, new_base, adapter, covariance, root)
            new_base, adapter = quantized.base.to(device), quantized.adapter
            if errors is not None:
                errors[name] = {"error": quantized.error, "weighted_error": quantized.weighted_error}
        if new_base is not None:
            require_finite({name: new_base}, "the new base")
            put_base(name, module, new_base)  # layers are distinct: safe from parallel workers
        elif release is not None:
            release(module.weight)
        written.add(name)
        return adapter.to(home)

    def job(name: str, decompose: Decomposer | None, statistic: torch.Tensor | None) -> backend.LayerJob[LayerAdapter]:
        p = plan[name]
        if quantization is not None and quantization.needs_statistic:
            inputs.hold(name, statistic)

        def run() -> LayerAdapter:
            adapter = _build_layer(method, name, p, decompose, randoms[name], adapter_dtype(p.module), device)
            return write(name, adapter)

        return backend.LayerJob(name, tuple(weight_matrix(p.module).shape), run)

    def write_job(name: str, adapter: LayerAdapter) -> backend.LayerJob[LayerAdapter]:
        return backend.LayerJob(name, tuple(weight_matrix(plan[name].module).shape), lambda: write(name, adapter))

    bar = tqdm(total=len(plan), desc=f"building {method.name}", unit="layer", disable=not progress)
    with bar, backend.on(device).layer_pool(launch) as pool:
        for results in decompose_waves(waves, row, plan, device, job, pool):
            if launch.writer:  # the layers other processes decomposed
                elsewhere = [write_job(name, adapter) for name, adapter in results.items() if name not in written]
                results.update(pool.map_here(elsewhere))
            built.update(results)
            bar.update(len(results))
    missing = [n for n in plan if n not in built]
    if missing:
        raise RuntimeError(f"no statistics reached {len(missing)} layers, e.g. {missing[0]}")
    conv1d = [n for n, p in plan.items() if type(p.module).__name__ == "Conv1D"]
    return AdapterSet(method.name, {n: built[n] for n in plan}, conv1d)
