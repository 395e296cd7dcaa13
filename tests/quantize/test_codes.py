"""The values of quantize_dequantize are exactly those bitsandbytes stores: against its functional
API, against a plain-torch NF4 oracle, and against a checkpoint loaded with BitsAndBytesConfig on
CPU (dequantized straight from the loaded parameters, before any forward: on CPUs with AVX512-BF16 a
no-grad forward repacks a Linear4bit's weight in place). Re-quantizing its output changes nothing,
so a dequantized base saved as a float checkpoint loads back onto the same codes.

bitsandbytes 0.50.2's CPU ``dequantize_4bit`` misreads blocks that run across rows (a row length not
a multiple of 64, as the tiny Llama's down_proj (64, 96)), so the stored codes are decoded with
``decode_4bit`` and compared with bitsandbytes' own dequantization only where
``cpu_decodes_exactly`` says it holds."""

import pytest
import torch

from svdadapt import SvdadaptError
from svdadapt.quantize import (
    KINDS,
    NF4_CODE,
    cpu_decodes_exactly,
    decode_4bit,
    nf4_reference,
    quantize_dequantize,
)

bnb = pytest.importorskip("bitsandbytes")
functional = pytest.importorskip("bitsandbytes.functional")


def _weight(out_f=96, in_f=192, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # heavy-ish tails and per-row scales, as trained weights have
    return torch.randn(out_f, in_f, generator=gen) * torch.linspace(0.01, 0.2, out_f)[:, None]


def test_nf4_code_is_bitsandbytes_code():
    _, state = functional.quantize_4bit(_weight(), blocksize=64, quant_type="nf4")
    assert state.code.tolist() == list(torch.tensor(NF4_CODE, dtype=torch.float32).tolist())


@pytest.mark.parametrize("shape", [(96, 192), (64, 64), (64, 96), (40, 24), (3, 100)])  # blocks across rows too
def test_nf4_equals_the_plain_torch_oracle(shape):
    W = _weight(*shape)
    mine = quantize_dequantize(W, "nf4")
    assert mine.dtype == torch.float32 and mine.shape == W.shape
    # exact: both take the nearest of the same 16 values times the same float32 absmax
    assert torch.equal(mine, nf4_reference(W))
    assert len(torch.unique(mine.reshape(-1)[:64])) <= 16  # one block: at most the 16 values × its absmax


def test_each_kind_against_the_functional_api():
    W = _weight()
    for kind in ("nf4", "fp4"):
        packed, state = functional.quantize_4bit(W, blocksize=64, quant_type=kind)
        assert torch.equal(quantize_dequantize(W, kind), functional.dequantize_4bit(packed, state))
    CB, SCB, _ = functional.int8_vectorwise_quant(W.half())
    assert torch.equal(quantize_dequantize(W, "int8"), functional.int8_vectorwise_dequant(CB, SCB))
    assert torch.allclose(quantize_dequantize(W, "int8"), CB.double().mul(SCB[:, None].double()).div(127).float())
    # and the error is what each grid allows: int8 ≪ 4-bit
    err = {k: ((quantize_dequantize(W, k) - W).norm() / W.norm()).item() for k in KINDS}
    assert err["int8"] < 0.02 < err["nf4"] < 0.15 and err["fp4"] < 0.2, err


@pytest.mark.parametrize("kind", KINDS)
def test_idempotent(kind):
    once = quantize_dequantize(_weight(seed=1), kind)
    assert torch.equal(quantize_dequantize(once, kind), once)
    assert torch.equal(quantize_dequantize(once.double(), kind), once)  # float64 input: made float32 first


def _loaded_layers(directory, kind):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = (BitsAndBytesConfig(load_in_8bit=True) if kind == "int8"
              else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind))  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(directory, quantization_config=config, device_map="cpu")
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):  # decoded from the stored codes, no forward run
            state = module.weight.quant_state
            found[name] = decode_4bit(module.weight.data, state.absmax, state.code, state.blocksize, state.shape)
            assert state.blocksize == 64 and not state.nested and state.dtype == torch.float32
            if cpu_decodes_exactly(state.shape):
                assert torch.equal(found[name], functional.dequantize_4bit(module.weight.data, state)), name
        elif isinstance(module, bnb.nn.Linear8bitLt):
            found[name] = functional.int8_vectorwise_dequant(module.weight.data, module.weight.SCB)
    return found


def _float_weights(directory):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return model, {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


@pytest.mark.parametrize("kind", KINDS)
def test_a_checkpoint_loaded_with_bitsandbytes_holds_these_values(tiny_dirs, tmp_path, kind):
    model, weights = _float_weights(tiny_dirs["llama"])
    loaded = _loaded_layers(tiny_dirs["llama"], kind)
    assert set(loaded) == set(weights) - {"lm_head"}  # transformers keeps the head float
    for name, values in loaded.items():
        assert torch.equal(values, quantize_dequantize(weights[name], kind)), name
    # the dequantized model saved as float32 loads back onto the same values (what a quantized run writes)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name in loaded:
                module.weight.copy_(quantize_dequantize(module.weight, kind))
    model.save_pretrained(tmp_path)
    again = _loaded_layers(tmp_path, kind)
    for name, values in again.items():
        assert torch.equal(values, loaded[name]), name


def test_unknown_kind_and_missing_bitsandbytes(monkeypatch):
    with pytest.raises(SvdadaptError, match="unknown quantization 'nf5'; did you mean 'nf4'"):
        quantize_dequantize(_weight(), "nf5")
    import builtins

    real_import = builtins.__import__

    def no_bitsandbytes(name, *args, **kwargs):
        if name.startswith("bitsandbytes"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bitsandbytes)
    with pytest.raises(SvdadaptError, match=r"quantizing needs bitsandbytes, which is not installed: pip install"):
        quantize_dequantize(_weight(), "nf4")


@pytest.mark.parametrize("shape", [(96, 192), (64, 64), (64, 96), (8, 32)])
def test_bitsandbytes_dequantizes_as_decoded_where_the_cpu_kernel_is_exact(shape):
    W = _weight(*shape)
    packed, state = functional.quantize_4bit(W, blocksize=64, quant_type="nf4")
    mine = decode_4bit(packed, state.absmax, state.code, 64, W.shape)
    assert torch.equal(mine, nf4_reference(W))
    if cpu_decodes_exactly(shape):
        assert torch.equal(mine, functional.dequantize_4bit(packed, state))
