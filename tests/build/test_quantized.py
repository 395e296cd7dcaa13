"""Quantized bases (``build --quantize``): every residual row, QLoRA rows and CLoQ build a run whose
base is a standard transformers 4-bit checkpoint that stock transformers + PEFT load, reproducing
svdadapt's own logits; the base holds exactly the codes the build chose; run.json records it."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("bitsandbytes", reason="quantized bases need bitsandbytes (svdadapt[quant])")

from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from svdadapt import backend  # noqa: E402
from svdadapt.commands import CalibrateOptions, calibrate  # noqa: E402
from svdadapt.quantize import quantize_dequantize  # noqa: E402

from ..helpers import logits, make_run, rel  # noqa: E402

RESIDUAL_ROWS = ["pissa", "milora", "corda-ipa", "corda-kpa", "lora-null", "kasa"]
QLORA_ROWS = ["lora", "eva"]
SCALE = 1e-6  # a block's (int8: a row's) scale in float32 rounded differently: 2⁻²⁴ ≈ 6e-8 of each value
QUANTIZED = "model.layers.0.self_attn.q_proj"  # 64 → 64: whole 64-blocks per row, quantized
KEPT_FLOAT = "model.layers.0.mlp.down_proj"  # 96 → 64: rows of 1.5 blocks, kept float (bnb's CPU kernel misreads)


@pytest.fixture(scope="module")
def store(tiny_dirs, text_file, tmp_path_factory):
    """One covariance store of the tiny Llama (8 × 32 tokens), for every row that needs statistics."""
    out = tmp_path_factory.mktemp("qstore") / "store"
    calibrate(
        CalibrateOptions.of(model=str(tiny_dirs["llama"]), data=str(text_file), samples=8, seq_len=32, batch_size=4,
                            out=str(out), device="cpu"),
        progress=False,
    )  # fmt: skip
    return out


def _quantized_run(tiny_dirs, text_file, store, out, method, **extra):
    from svdadapt.methods import get_method

    covariances = str(store) if get_method(method).needs else None
    return make_run(tiny_dirs, text_file, out, method=method, data=None, covariances=covariances, **extra)


def _stock(run):
    """The run as a user loads it with stock transformers + PEFT (the repack switched off, as on CPU
    every bitsandbytes user must; see README "4-bit bases")."""
    base = AutoModelForCausalLM.from_pretrained(run.path / "base")
    for module in base.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return base, PeftModel.from_pretrained(base, run.path / "adapter")


@pytest.mark.parametrize("method", RESIDUAL_ROWS + QLORA_ROWS + ["cloq"])
def test_a_quantized_build_loads_in_stock_transformers_and_peft(method, tiny_dirs, text_file, store, tmp_path):
    run = _quantized_run(tiny_dirs, text_file, store, tmp_path / "run", method, quantize="nf4")
    base, peft = _stock(run)
    assert type(base.get_submodule(QUANTIZED)).__name__ == "Linear4bit"
    assert type(base.get_submodule(KEPT_FLOAT)).__name__ == "Linear"
    assert json.loads((run.path / "base" / "config.json").read_text())["quantization_config"]["load_in_4bit"]
    # stock PEFT on the stock 4-bit base computes what svdadapt's own adapters on it compute:
    # the same bitsandbytes layers and the same float32 adapter arithmetic, summed in another order
    ours = run.load_adapted().model
    assert type(ours.get_submodule(QUANTIZED).base_layer).__name__ == "Linear4bit"
    assert rel(logits(peft), logits(ours)) < 1e-6
    recorded = run.quantization
    assert recorded["kind"] == "nf4" and recorded["how"] == ("cloq" if method == "cloq" else "plain")
    assert set(recorded["layers"]) == {n for n in run.meta["layers"] if not n.endswith("down_proj")}
    assert KEPT_FLOAT in recorded["float_layers"] and "lm_head" in recorded["float_layers"]


def test_the_base_holds_the_quantized_residual_exactly(tiny_dirs, text_file, store, tmp_path):
    """The 4-bit base's codes are qd(W − s·B·A) of the float pissa run: the written dequantized values
    re-quantize to themselves (bitwise, idempotent), and the float run's residual quantizes to them
    up to float32 rounding (SCALE: the build takes the residual in float64, the float run stores it
    rounded to float32, so a block's absmax, and with it every value of the block, may differ in its
    last bit: ~3e-8 relative measured)."""
    quantized = _quantized_run(tiny_dirs, text_file, store, tmp_path / "q", "pissa", quantize="nf4")
    plain = _quantized_run(tiny_dirs, text_file, store, tmp_path / "f", "pissa")
    stored = backend.dequantized_weight(quantized.load_base().model.get_submodule(QUANTIZED))  # (out, in)
    residual = plain.load_base().model.get_submodule(QUANTIZED).weight  # (out, in): W − s·B·A in float32
    assert torch.equal(quantize_dequantize(stored, "nf4"), stored)
    assert rel(quantize_dequantize(residual, "nf4"), stored) < SCALE
    # the float base of a kept-float layer is the float run's residual, bit for bit
    kept = quantized.load_base().model.get_submodule(KEPT_FLOAT).weight
    assert torch.equal(kept, plain.load_base().model.get_submodule(KEPT_FLOAT).weight)


def test_quantized_pissa_is_nearer_the_float_model_than_qlora(tiny_dirs, text_file, store, tmp_path):
    """The point of a residual base: QPiSSA's Ŵ = Q + s·B·A errs less than QLoRA's, and refinement
    from PiSSA's factors no more than plain QPiSSA (per run.json's recorded relative errors); the
    init logits follow (measured here: QLoRA ≈ 0.15, QPiSSA ≈ 0.09 relative to the float model)."""
    errors, outputs = {}, {}
    original = logits(AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]))
    for name, method, iters in (("qlora", "lora", 0), ("qpissa", "pissa", 0), ("refined", "pissa", 3)):
        run = _quantized_run(tiny_dirs, text_file, store, tmp_path / name, method, quantize="nf4", quant_iters=iters)
        errors[name] = run.quantization["mean_error"]
        outputs[name] = rel(logits(run.load_adapted().model), original)
    assert errors["qpissa"] < errors["qlora"] and errors["refined"] <= errors["qpissa"] + 1e-12
    assert outputs["qpissa"] < outputs["qlora"]


@pytest.mark.parametrize("kind", ["fp4", "int8"])
def test_fp4_and_int8_bases_load_and_reproduce(kind, tiny_dirs, text_file, store, tmp_path):
    run = _quantized_run(tiny_dirs, text_file, store, tmp_path / "run", "pissa", quantize=kind)
    base, peft = _stock(run)
    layer = {"fp4": "Linear4bit", "int8": "Linear8bitLt"}[kind]
    assert type(base.get_submodule(QUANTIZED)).__name__ == layer
    if kind == "int8":  # LLM.int8 takes any width: down_proj is quantized too
        assert type(base.get_submodule(KEPT_FLOAT)).__name__ == layer
    assert rel(logits(peft), logits(run.load_adapted().model)) < 1e-6
    stored = backend.dequantized_weight(run.load_base().model.get_submodule(QUANTIZED))
    assert rel(quantize_dequantize(stored, kind), stored) < SCALE  # int8: absmax/127 re-derived, its last bit


def test_cloq_lowers_the_error_on_the_calibration_inputs(tiny_dirs, text_file, store, tmp_path):
    """CLoQ chooses B, A for the inputs: its input-weighted error is below QLoRA's plain one on
    every quantized layer (the optimum itself is tested in tests/quantize)."""
    from svdadapt.quantize import weighted_error
    from svdadapt.store import CovarianceStore

    cloq = _quantized_run(tiny_dirs, text_file, store, tmp_path / "cloq", "cloq", quantize="nf4")
    qlora = _quantized_run(tiny_dirs, text_file, store, tmp_path / "qlora", "lora", quantize="nf4")
    original = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"])
    covariances = CovarianceStore.load(store)
    assert cloq.quantization["mean_weighted_error"] is not None
    for name in cloq.adapters().layers:
        if name.endswith("down_proj"):
            continue
        W = original.get_submodule(name).weight.double()  # (out, in)
        C = covariances.covariance(name).double()  # (in, in)
        made = {}
        for key, run in (("cloq", cloq), ("qlora", qlora)):
            layer = run.adapters().layers[name]
            Q = backend.dequantized_weight(run.load_base().model.get_submodule(name)).double()
            made[key] = weighted_error(W, Q + layer.delta(), C)
        assert made["cloq"] < made["qlora"], (name, made)
