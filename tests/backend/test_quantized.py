"""bitsandbytes bases in the back end: the AVX512-BF16 repack trap closed by the loader, a quantized
checkpoint written and read back, dequantizing, and the one-line refusals of a machine without
bitsandbytes or its CPU kernels."""

from __future__ import annotations

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes", reason="quantized bases need bitsandbytes (svdadapt[quant])")

from svdadapt import backend  # noqa: E402
from svdadapt.adapters.inject import inject  # noqa: E402
from svdadapt.errors import SvdadaptError  # noqa: E402

from ..helpers import IDS, make_run  # noqa: E402

# Gradients of one loss through two float32 computations of the same function (bitsandbytes' 4-bit
# product against F.linear with the dequantized weight): each rounds differently, ~1e-7 per
# operation, grown through two blocks and back; 1e-4 leaves room for that and none for a dropped path.
GRADIENTS = 1e-4


@pytest.fixture(scope="module")
def run(tiny_dirs, text_file, tmp_path_factory):
    """A pissa run of the tiny Llama on an nf4 base (down_proj, 96 wide, stays float)."""
    return make_run(tiny_dirs, text_file, tmp_path_factory.mktemp("q") / "run", method="pissa", quantize="nf4")


def _gradients(model) -> dict[str, torch.Tensor]:
    """Adapter gradients of the LM loss on IDS, after one eval-mode forward without gradients (the
    forward that repacks the 4-bit weights where the trap is open)."""
    model.eval()
    with torch.no_grad():
        model(input_ids=IDS)
    model.train()
    model.zero_grad(set_to_none=True)
    model(input_ids=IDS, labels=IDS).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def _float_twin(run):
    """The run's base with every 4-bit layer replaced by an nn.Linear of its dequantized weight."""
    loaded = run.load_base()
    assert backend.dequantize_model(loaded.model)
    inject(loaded.model, run.adapters())
    return loaded.model


def test_adapter_gradients_on_the_4bit_base_equal_the_float_twins_after_an_eval_forward(run):
    quantized = run.load_adapted().model  # svdadapt's loader: the trap closed
    assert sum(backend.is_quantized_layer(m) for m in quantized.modules()) == 12  # 7 per block, down_proj float
    got, expected = _gradients(quantized), _gradients(_float_twin(run))
    assert set(got) == set(expected) and len(got) == 2 * 14
    for name, grad in expected.items():
        assert got[name] is not None, f"{name} got no gradient"
        assert (got[name] - grad).norm() <= GRADIENTS * grad.norm(), name


@pytest.mark.skipif(
    not getattr(__import__("bitsandbytes.nn.modules", fromlist=["x"]), "has_avx512bf16", lambda: False)(),
    reason="this CPU has no AVX512-BF16: bitsandbytes never repacks here, there is no trap to show",
)
def test_the_trap_is_real_here_without_the_loaders_switch(run):
    """What the loader prevents: with the repack left on, the same gradients come out wrong."""
    model = run.load_adapted().model
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = True  # as stock from_pretrained leaves it on this CPU
    got, expected = _gradients(model), _gradients(_float_twin(run))
    wrong = [n for n, g in expected.items() if got[n] is None or (got[n] - g).norm() > GRADIENTS * g.norm()]
    assert wrong, "the repack no longer breaks gradients: bitsandbytes changed, the switch may be unneeded"


def test_dequantized_weight_is_what_the_layer_computes(run):
    layer = run.load_base().model.get_submodule("model.layers.1.self_attn.o_proj")
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    W = backend.dequantized_weight(layer)  # (out, in)
    assert W.shape == (64, 64) and W.dtype == torch.float32
    assert torch.allclose(layer(x), x @ W.T, rtol=0, atol=1e-6)


def test_loading_a_4bit_base_without_bitsandbytes_or_its_kernels_is_one_line(run, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name.split(".")[0] == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(
        SvdadaptError, match=r"needs bitsandbytes, which is not installed: pip install 'svdadapt\[quant\]'"
    ):
        run.load_base()
    monkeypatch.setattr(builtins, "__import__", real_import)

    def no_kernel(*args, **kwargs):
        raise NotImplementedError("no CPU implementation of quantize_4bit")

    monkeypatch.setattr(bnb.functional, "quantize_4bit", no_kernel)
    with pytest.raises(SvdadaptError, match="4-bit kernels on cpu") as refused:
        run.load_base()
    assert "\n" not in str(refused.value)
