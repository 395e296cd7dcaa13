"""Decompositions against float64 references: exact reconstruction, the right components, damping."""

import pytest
import torch

from svdadapt import SvdadaptError
from svdadapt.decompose import asvd, context_svd, plain_svd

SHAPES = [(48, 48), (24, 64), (96, 40)]  # square, out < in, out > in


def _data(out_f, in_f, seed=0):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64) * 0.05
    X = torch.randn(500, in_f, generator=gen, dtype=torch.float64) * torch.linspace(0.05, 3, in_f, dtype=torch.float64)
    return W, X.T @ X / 500, X.abs().mean(0)


def reference(W, K):
    """Textbook float64: SVD of W·K, V = K⁻¹Ĥ with an explicit solve."""
    U, S, Vh = torch.linalg.svd(W @ K, full_matrices=False)
    return U, S, torch.linalg.solve(K, Vh.T)


@pytest.mark.parametrize("shape", SHAPES)
def test_context_svd_reconstructs_and_matches_the_textbook(shape):
    W, C, _ = _data(*shape)
    f = context_svd(W, C)
    assert f.damping == 0.01
    # W = U diag(S) Vᵀ to float64 rounding (relative to |W|)
    assert (f.product() - W).abs().max() / W.abs().max() < 1e-12
    damped = C + 0.01 * C.diagonal().mean() * torch.eye(C.shape[0], dtype=torch.float64)
    U, S, V = reference(W, damped)
    torch.testing.assert_close(f.S, S, rtol=1e-10, atol=1e-12 * S[0].item())
    for r in (1, 4):
        for pick in ("top", "bottom"):
            mine = getattr(f, pick)(r).product()
            k = S.shape[0]
            sl = slice(0, r) if pick == "top" else slice(k - r, k)
            ref = (U[:, sl] * S[sl]) @ V[:, sl].T
            assert (mine - ref).norm() / ref.norm() < 1e-8, (pick, r)


@pytest.mark.parametrize("shape", SHAPES)
def test_plain_svd_and_asvd_reconstruct(shape):
    W, _, mean_abs = _data(*shape)
    plain = plain_svd(W)
    torch.testing.assert_close(plain.S, torch.linalg.svdvals(W), rtol=1e-10, atol=1e-13)
    assert (plain.product() - W).abs().max() < 1e-13
    eye = torch.eye(plain.U.shape[1], dtype=torch.float64)
    torch.testing.assert_close(plain.U.T @ plain.U, eye, atol=1e-12, rtol=0)
    scaled = asvd(W, mean_abs)
    assert (scaled.product() - W).abs().max() < 1e-13
    s = mean_abs**0.5 + 1e-6
    torch.testing.assert_close(scaled.S, torch.linalg.svdvals(W * s), rtol=1e-10, atol=1e-13)


def test_ill_conditioned_weights_take_the_full_svd_path():
    gen = torch.Generator().manual_seed(3)
    U = torch.linalg.qr(torch.randn(40, 40, generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(60, 40, generator=gen, dtype=torch.float64))[0]
    S = torch.logspace(0, -12, 40, dtype=torch.float64)  # σ_min/σ_max = 1e-12
    W = (U * S) @ V.T
    f = plain_svd(W)
    assert (f.product() - W).abs().max() < 1e-14
    torch.testing.assert_close(f.S[-3:], S[-3:], rtol=1e-3, atol=0)  # the smallest still resolved


def test_singular_covariance_is_handled_by_damping_never_nan():
    W, _, _ = _data(24, 64)
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(10, 64, generator=gen, dtype=torch.float64)  # 10 tokens: rank 10 of 64
    f = context_svd(W, X.T @ X / 10)
    assert f.damping == 0.01 and bool(torch.isfinite(f.U).all() and torch.isfinite(f.V).all())
    assert (f.product() - W).abs().max() / W.abs().max() < 1e-12


def test_bad_statistics_and_weights_are_clear_errors():
    W, C, _ = _data(24, 64)
    with pytest.raises(SvdadaptError, match="zero"):
        context_svd(W, torch.zeros_like(C), name="l")
    bad = C.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(SvdadaptError, match="non-finite"):
        context_svd(W, bad, name="l")
    W[1, 1] = float("inf")
    with pytest.raises(SvdadaptError, match="weight of l has non-finite"):
        plain_svd(W, name="l")
