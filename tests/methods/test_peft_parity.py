"""Parity with a peer: PEFT 0.21's CorDA (kpm/ipm) and PiSSA initialisations, given the same inputs.

PEFT computes in float32 (covariance inverse, SVD), svdadapt in float64. Compared are the residual
base weights and the adapter products s·B·A (singular vectors have free signs, products do not).

Tiny models (well-conditioned): relative Frobenius tolerances of 3e-4 on residuals (float32
rounding of W·C' and C'⁻¹, grown by C''s condition number) and 1e-2 / 2e-3 on kpm / ipm products
(a float32 SVD moves the r smallest or largest singular directions by ~eps32·σ_max/gap, the
smallest the most).

The real SmolLM2 is not well-conditioned: in some layers σ_max/σ_min of W·C' exceeds 1e8, below
float32's resolution, and PEFT's bottom-r components there are off by tens of percent. So each
layer is checked against a float64 textbook decomposition: svdadapt must match it everywhere (to
the float32 storage of A and B), and PEFT must match svdadapt wherever float32 can resolve the
chosen components (spectral gap at the cut ≥ 5e-6·σ_max).
"""

import copy
import warnings

import pytest
import torch

from svdadapt import collect_covariances
from svdadapt.assets import tiny_model
from svdadapt.build import build_adapters, plan_layers, waves_from_store, waves_without_statistics
from svdadapt.methods import get_method
from svdadapt.targets import find_targets, weight_matrix

from ..helpers import padded_batches

peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora import corda as peft_corda  # noqa: E402
from peft.tuners.lora.config import CordaConfig  # noqa: E402

TOLERANCE = {"corda-kpa": (3e-4, 1e-2), "corda-ipa": (3e-4, 2e-3), "pissa": (3e-4, 2e-3)}


def peft_model(model, store, method, rank, alpha):
    """PEFT's own pipeline, fed our covariances (its collect_eigens/crop steps, no pickle files)."""
    names = list(find_targets(model))
    if method == "pissa":
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=names, init_lora_weights="pissa")
        return get_peft_model(model, config)
    kind = {"corda-kpa": "kpm", "corda-ipa": "ipm"}[method]
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=names, init_lora_weights="corda",
        corda_config=CordaConfig(corda_method=kind),
    )  # fmt: skip
    for name, module in peft_corda.target_modules(model, config):
        module.corda_method, module.rank = kind, rank
        module.covariance_matrix = store.covariance(name).float().clone()
    peft_corda.collect_eigens(model, config, False)
    peft_corda.crop_corda_eigens(model, config)
    return get_peft_model(model, config)


def ours(model, store, method, rank, alpha):
    row = get_method(method)
    plan = plan_layers(find_targets(model), rank, alpha)
    waves = waves_from_store(store, list(plan), "covariance") if row.needs else waves_without_statistics(plan)
    return build_adapters(row, plan, waves, progress=False)


def compare(model, store, method, rank, alpha):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft_model(copy.deepcopy(model), store, method, rank, alpha)
    mine_model = copy.deepcopy(model)
    adapters = ours(mine_model, store, method, rank, alpha)
    modules = dict(mine_model.named_modules())
    worst_residual = worst_product = 0.0
    for name, adapter in adapters.layers.items():
        layer = theirs.base_model.model.get_submodule(name)
        W_theirs = weight_matrix(layer.base_layer).double()
        W_mine = weight_matrix(modules[name]).double()
        BA_theirs = layer.scaling["default"] * (
            layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double()
        )
        worst_residual = max(worst_residual, ((W_theirs - W_mine).norm() / W_mine.norm()).item())
        worst_product = max(worst_product, ((BA_theirs - adapter.delta()).norm() / adapter.delta().norm()).item())
    return worst_residual, worst_product


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("method", list(TOLERANCE))
def test_tiny_models_match_peft(kind, method):
    model = tiny_model(kind)
    store = collect_covariances(model, padded_batches() * 4)
    residual, product = compare(model, store, method, 4, 8)
    assert residual < TOLERANCE[method][0] and product < TOLERANCE[method][1], (residual, product)


def float64_reference(W, C, method, rank):
    """s·B·A of the textbook decomposition: SVD of W·C' (float64), V = C'⁻¹Ĥ by an explicit solve."""
    K = torch.eye(W.shape[1], dtype=torch.float64)
    if method.startswith("corda"):
        K = C + 0.01 * C.diagonal().mean() * K
    U, S, Vh = torch.linalg.svd(W @ K, full_matrices=False)
    V = torch.linalg.solve(K, Vh.T)
    k = S.shape[0]
    cut = slice(k - rank, k) if method == "corda-kpa" else slice(0, rank)
    boundary = (S[k - rank - 1] - S[k - rank]) if method == "corda-kpa" else (S[rank - 1] - S[rank])
    return (U[:, cut] * S[cut]) @ V[:, cut].T, (boundary / S[0]).item()


@pytest.mark.slow
@pytest.mark.parametrize("method", list(TOLERANCE))
def test_real_smollm2_matches_float64_and_peft_where_float32_resolves(method):
    from svdadapt.data import make_batches, make_samples, resolve
    from svdadapt.models import load_model

    loaded = load_model("default")
    model = loaded.model
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    batches = make_batches(make_samples(resolve("wiki"), loaded.tokenizer, 8, 256), 4, loaded.tokenizer.pad_token_id)
    store = collect_covariances(model, batches)
    rank = 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft_model(copy.deepcopy(model), store, method, rank, rank)
    adapters = ours(copy.deepcopy(model), store, method, rank, rank)
    modules = dict(model.named_modules())
    compared = 0
    for name, adapter in adapters.layers.items():
        W = weight_matrix(modules[name]).double()
        reference, gap = float64_reference(W, store.covariance(name).double(), method, rank)
        mine = adapter.delta()
        assert (mine - reference).norm() / reference.norm() < 1e-6, name  # A, B stored in float32
        layer = theirs.base_model.model.get_submodule(name)
        peft_product = layer.scaling["default"] * (
            layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double()
        )
        if gap >= 5e-6:
            compared += 1
            assert (peft_product - mine).norm() / mine.norm() < 5e-3, (name, gap)
    assert compared >= 3  # the comparison with PEFT is never vacuous
