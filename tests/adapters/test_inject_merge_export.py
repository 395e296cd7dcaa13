"""Built adapters on tiny models: identity at init, stock PEFT loads them, merge, export, unload, stacking."""

import copy

import pytest
import torch
from peft import PeftModel
from transformers import AutoModel, AutoModelForCausalLM

from svdadapt.adapters.inject import adapter_layers, inject, merge, unload, unmerge
from svdadapt.adapters.peft_format import lora_on_original
from svdadapt.commands import ExportOptions, MergeOptions, export
from svdadapt.commands import merge as merge_run
from svdadapt.runs import update_run

from ..helpers import F32, IDS, logits, make_run, rel

RESIDUAL = ["pissa", "milora", "corda-ipa", "corda-kpa"]
AUTO = {"llama": AutoModelForCausalLM, "gpt2": AutoModelForCausalLM, "bert": AutoModel}


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("method", RESIDUAL)
def test_stock_peft_on_the_residual_base_reproduces_the_original(kind, method, tiny_dirs, text_file, tmp_path):
    run = make_run(tiny_dirs, text_file, tmp_path / "run", kind, method)
    assert run.base_changed
    original = logits(AUTO[kind].from_pretrained(tiny_dirs[kind]), IDS)
    base = AUTO[kind].from_pretrained(run.path / "base")
    assert rel(logits(base, IDS), original) > 1e-3  # the base alone really changed
    peft = PeftModel.from_pretrained(base, run.path / "adapter")
    # float32 model: identity at init to float32 rounding through two blocks
    assert rel(logits(peft, IDS), original) < F32


@pytest.mark.parametrize("method", RESIDUAL + ["lora"])
def test_our_injected_adapter_is_an_identity_at_init_and_unload_restores(method, tiny_dirs, text_file, tmp_path):
    run = make_run(tiny_dirs, text_file, tmp_path / "run", method=method)
    original_model = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"])
    original = logits(original_model, IDS)
    model = run.load_base().model
    inject(model, run.adapters(), dropout=0.0)
    assert rel(logits(model, IDS), original) < F32
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters.default.lora_" in n for n in trainable)
    unload(model)
    for (name, a), (_, b) in zip(model.named_parameters(), original_model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-7, msg=name)  # original weights, to float32 rounding


def test_merge_unmerge_and_merged_model_directory(tiny_dirs, text_file, tmp_path):
    run = make_run(tiny_dirs, text_file, tmp_path / "run")
    model = run.load_base().model
    inject(model, run.adapters())
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.adapters["default"].lora_B.weight.mul_(1.5)  # a "trained" adapter
    adapted = logits(model, IDS)
    merge(model)
    assert rel(logits(model, IDS), adapted) < F32
    unmerge(model)
    assert rel(logits(model, IDS), adapted) < F32
    merged_dir = merge_run(MergeOptions(run=str(run.path), out=str(tmp_path / "merged"))).out
    dense = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert rel(logits(dense, IDS), logits(AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]), IDS)) < F32
    assert not any("lora" in n for n, _ in dense.named_parameters())


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["corda-kpa", "pissa", "lora"])
def test_export_against_the_original_reproduces_a_trained_run(kind, method, tiny_dirs, text_file, tmp_path):
    run = make_run(tiny_dirs, text_file, tmp_path / "run", kind, method)
    trained = run.adapters()
    gen = torch.Generator().manual_seed(5)
    for layer in trained.layers.values():  # stand-in for training: move every factor
        layer.A = layer.A + 0.05 * torch.randn(layer.A.shape, generator=gen)
        layer.B = layer.B + 0.05 * torch.randn(layer.B.shape, generator=gen)
    run = update_run(run, trained, stage="trained")
    # the trained run, evaluated our way: base + injected trained adapter
    model = run.load_base().model
    inject(model, run.adapters())
    expected = logits(model, IDS)
    out = export(ExportOptions(run=str(run.path), against_original=str(tiny_dirs[kind]), out=str(tmp_path / "exp"))).out
    peft = PeftModel.from_pretrained(AUTO[kind].from_pretrained(tiny_dirs[kind]), out)
    assert rel(logits(peft, IDS), expected) < F32
    ranks = {f.rank for f in lora_on_original(run.adapters()).values()}
    assert ranks == ({4} if method == "lora" else {8})
    # and the run's own PEFT adapter on its base gives the same
    base_peft = PeftModel.from_pretrained(AUTO[kind].from_pretrained(run.base_location), run.path / "adapter")
    assert rel(logits(base_peft, IDS), expected) < F32


def test_adapters_stack_and_unload_in_any_order(tiny_dirs, text_file, tmp_path):
    """A CorDA adapter and a LoRA adapter on the same layers; unloading restores the original."""
    corda = make_run(tiny_dirs, text_file, tmp_path / "corda")
    lora = make_run(tiny_dirs, text_file, tmp_path / "lora", method="lora")
    original = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"])
    model = corda.load_base().model
    inject(model, corda.adapters(), name="corda")
    inject(model, lora.adapters(), name="lora")
    assert rel(logits(model, IDS), logits(original, IDS)) < F32  # both identities at init
    unload(copy.deepcopy(model))
    restored = unload(model)
    for (name, a), (_, b) in zip(restored.named_parameters(), original.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-7, msg=name)
