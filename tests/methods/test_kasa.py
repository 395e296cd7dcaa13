"""KaSA: truncation, its regularizers and layer outputs against PEFT 0.21; lossless unload/export."""

import copy
import warnings

import pytest
import torch

from svdadapt import SvdadaptError
from svdadapt.adapters.inject import inject, unload
from svdadapt.adapters.losses import kasa_terms, trainable_adapters
from svdadapt.adapters.state import AdapterSet, LayerAdapter
from svdadapt.assets import tiny_model
from svdadapt.build import build_adapters, plan_layers, waves_from_store, waves_without_statistics
from svdadapt.methods import get_method
from svdadapt.targets import find_targets, weight_matrix

peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.lora.config import KasaConfig  # noqa: E402

BETA, GAMMA, RANK, ALPHA = 0.1, 1e-3, 4, 8
IDS = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(0))


def peft_kasa(model):
    config = LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=list(find_targets(model)),
        kasa_config=KasaConfig(beta=BETA, gamma=GAMMA),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, config)


def our_kasa(model, truncation=None, store=None):
    method = get_method("kasa", truncation=truncation)
    plan = plan_layers(find_targets(model), RANK, ALPHA)
    waves = waves_from_store(store, list(plan), "covariance") if store else waves_without_statistics(plan)
    return build_adapters(method, plan, waves, progress=False)


def test_plain_truncation_matches_peft():
    base = tiny_model("llama")
    theirs = peft_kasa(copy.deepcopy(base))
    mine_model = copy.deepcopy(base)
    our_kasa(mine_model)
    modules = dict(mine_model.named_modules())
    for name in find_targets(base):
        W_theirs = weight_matrix(theirs.base_model.model.get_submodule(name).base_layer).double()
        W_mine = weight_matrix(modules[name]).double()
        # PEFT truncates with a float32 SVD, svdadapt in float64: agreement to float32 rounding of W
        assert (W_theirs - W_mine).norm() / W_mine.norm() < 2e-6, name


def test_same_factors_give_peft_layer_outputs_and_regularizer():
    """PEFT's truncated weights, A, B and ΔΣ copied into svdadapt's adapter: same outputs, same loss."""
    base = tiny_model("llama")
    theirs = peft_kasa(copy.deepcopy(base))
    gen = torch.Generator().manual_seed(1)
    layers = {}
    mine = copy.deepcopy(base)
    modules = dict(mine.named_modules())
    with torch.no_grad():
        for name in find_targets(base):
            layer = theirs.base_model.model.get_submodule(name)
            layer.lora_B["default"].weight.copy_(0.1 * torch.randn(layer.lora_B["default"].weight.shape, generator=gen))
            modules[name].weight.copy_(layer.base_layer.weight)
            layers[name] = LayerAdapter(
                layer.lora_A["default"].weight.clone(), layer.lora_B["default"].weight.clone(), ALPHA,
                layer.lora_diag["default"].detach().clone(),
            )  # fmt: skip
    inject(mine, AdapterSet("kasa", layers))
    with torch.no_grad():
        expected = theirs(input_ids=IDS).logits
        got = mine(input_ids=IDS).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    adapters = trainable_adapters(mine)
    terms = kasa_terms(adapters)
    ours = BETA * terms["kasa_singular"] + GAMMA * terms["kasa_orthogonal"]
    torch.testing.assert_close(ours, theirs._get_kasa_loss(), rtol=1e-6, atol=0)
    assert len(adapters) == 14


def test_context_truncation_drops_other_components_and_unload_restores():
    from svdadapt import collect_covariances

    from ..helpers import padded_batches

    base = tiny_model("llama")
    store = collect_covariances(base, padded_batches())
    plain_model, context_model = copy.deepcopy(base), copy.deepcopy(base)
    plain = our_kasa(plain_model)
    context = our_kasa(context_model, truncation="context", store=store)
    name = "model.layers.0.self_attn.q_proj"
    dropped_plain = plain.layers[name].base_change()
    dropped_context = context.layers[name].base_change()
    assert (dropped_plain - dropped_context).norm() > 0.1 * dropped_plain.norm()  # really other components
    assert context.layers[name].damping == 0.01
    inject(context_model, context)
    restored = unload(context_model)
    for (n, a), (_, b) in zip(restored.named_parameters(), base.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-7, msg=n)


def test_kasa_rank_must_leave_a_component():
    model = tiny_model("llama")
    with pytest.raises(SvdadaptError, match="not below min"):
        plan_layers(find_targets(model), 64, 8)


def test_context_truncation_needs_covariances(tiny_dirs, tmp_path):
    from svdadapt.commands import BuildOptions

    with pytest.raises(SvdadaptError, match="needs calibration covariances"):  # checked before any work
        BuildOptions.of(model=str(tiny_dirs["llama"]), method="kasa", truncation="context", rank=4,
                        out=str(tmp_path / "r"), device="cpu")  # fmt: skip
    with pytest.raises(SvdadaptError, match="--truncation applies to kasa, kasa-context, not to pissa"):
        get_method("pissa", truncation="context")
