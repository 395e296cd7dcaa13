"""float32 products through oneDNN: same results as torch's BLAS within float32 rounding, used only
where no gradient is needed, and covariances that match a float64 reference on either back end."""

import pytest
import torch
import torch.nn.functional as F

from svdadapt.backend import onednn as cpu_matmul
from svdadapt.calibrate import GramAccumulator

needs_onednn = pytest.mark.skipif(not cpu_matmul._works(), reason="this torch build has no oneDNN linear")


def _reference(x, w, b):
    return F.linear(x.double(), w.double(), None if b is None else b.double())


@needs_onednn
@pytest.mark.parametrize("shape", [(300, 96), (4, 50, 96), (0, 96)])
@pytest.mark.parametrize("bias", [False, True])
def test_onednn_product_matches_float64_within_float32_rounding(shape, bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(40, 96, generator=gen)
    b = torch.randn(40, generator=gen) if bias else None
    out = cpu_matmul._product(x, w, b) if x.numel() else cpu_matmul.linear(x, w, b)
    assert out.shape == (*shape[:-1], 40) and out.dtype == torch.float32
    if x.numel():
        # 96-term float32 dot products: |error| ≤ ~96 · 6e-8 · Σ|x||w|, far below 1e-5 of that
        scale = (x.double().abs() @ w.double().abs().T).max()
        assert (out.double() - _reference(x, w, b)).abs().max() <= 1e-5 * scale


@needs_onednn
def test_fast_linear_routes_only_products_without_gradients(monkeypatch):
    monkeypatch.setattr(cpu_matmul, "onednn_preferred", lambda: True)
    calls = []
    product = cpu_matmul._product
    monkeypatch.setattr(cpu_matmul, "_product", lambda *a: calls.append(a[0].shape) or product(*a))
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with cpu_matmul.fast_linear():
        with torch.no_grad():
            routed = layer(x)
        assert len(calls) == 1
        trained = layer(x)  # parameters need gradients here: torch's own product, with autograd
        trained.sum().backward()
        assert len(calls) == 1 and layer.weight.grad is not None
        with torch.no_grad():
            layer.double()(x.double())  # float64: not oneDNN's to compute
        assert len(calls) == 1
    torch.testing.assert_close(routed, trained.detach(), rtol=1e-6, atol=1e-6)


def test_fast_linear_changes_nothing_where_onednn_is_not_preferred(monkeypatch):
    monkeypatch.setattr(cpu_matmul, "onednn_preferred", lambda: False)
    monkeypatch.setattr(cpu_matmul, "_product", lambda *a: pytest.fail("oneDNN used"))
    layer = torch.nn.Linear(8, 4)
    with cpu_matmul.fast_linear(), torch.no_grad():
        layer(torch.randn(3, 8))


@pytest.mark.parametrize("setting", ["0", "1"])
def test_environment_variable_decides(monkeypatch, setting):
    monkeypatch.setenv(cpu_matmul.ENV, setting)
    decided = cpu_matmul.onednn_preferred.__wrapped__()
    assert decided == (setting == "1" and cpu_matmul._works())


@pytest.mark.parametrize("onednn", [False, pytest.param(True, marks=needs_onednn)])
@pytest.mark.parametrize("dim", [100, 577])
def test_covariance_sums_match_float64_on_either_back_end(monkeypatch, onednn, dim):
    monkeypatch.setattr(cpu_matmul, "onednn_preferred", lambda: onednn)
    gen = torch.Generator().manual_seed(dim)
    chunks = [torch.randn(256, dim, generator=gen) for _ in range(4)]
    acc = GramAccumulator(dim, torch.float64)
    for x in chunks:
        acc.add(x)
    ref = torch.cat(chunks).double()
    ref = ref.T @ ref
    # one float32 GEMM per chunk over 256 rows, float64 sums: relative error ~ sqrt(256) · 6e-8
    err = (acc.full_gram() - ref).abs().max() / ref.abs().max()
    assert err < 1e-6
    assert torch.equal(acc.full_gram(), acc.full_gram().T)


def _odd_biases(out: int) -> dict:
    return {
        "strided": torch.randn(2 * out)[::2],  # e.g. one half of a fused bias
        "expanded": torch.zeros(1).expand(out),
        "scalar": torch.tensor(0.5),
        "one value": torch.randn(1),
        "2-D": torch.randn(1, out),
    }


@needs_onednn
@pytest.mark.parametrize("kind", list(_odd_biases(40)))
def test_shapes_onednn_does_not_take_stay_with_torch(monkeypatch, kind):
    monkeypatch.setattr(cpu_matmul, "onednn_preferred", lambda: True)
    x, w = torch.randn(5, 96), torch.randn(40, 96)
    bias = _odd_biases(40)[kind]
    try:
        expected = F.linear(x, w, bias)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            cpu_matmul.linear(x, w, bias)
        return
    torch.testing.assert_close(cpu_matmul.linear(x, w, bias), expected, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_mismatched_shapes_get_torchs_own_error(monkeypatch):
    monkeypatch.setattr(cpu_matmul, "onednn_preferred", lambda: True)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        cpu_matmul.linear(torch.randn(5, 96), torch.randn(40, 95))


def test_the_decision_ignores_default_dtype_and_device(monkeypatch):
    expected = cpu_matmul._works()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert cpu_matmul._works() == expected
    finally:
        torch.set_default_dtype(previous)
