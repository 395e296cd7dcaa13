"""Decompositions against float64 references: exact reconstruction, the right components, damping."""

import pytest
import torch

from svdadapt import SvdadaptError, decompose, linalg
from svdadapt.decompose import Take, asvd, context_svd, factorize, identity_context, plain_svd

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


def _graded(out_f, in_f, smallest, seed=5):
    """W = U diag(S) Vᵀ with S from 1 down to ``smallest`` (log-spaced): its Gram squares that."""
    gen = torch.Generator().manual_seed(seed)
    k = min(out_f, in_f)
    U = torch.linalg.qr(torch.randn(out_f, k, generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(in_f, k, generator=gen, dtype=torch.float64))[0]
    S = torch.logspace(0, torch.log10(torch.tensor(smallest)).item(), k, dtype=torch.float64)
    return (U * S) @ V.T, (U, S, V)


@pytest.mark.parametrize("shape", [(64, 64), (96, 64), (64, 96)])  # square, tall, wide
def test_bottom_components_below_gram_resolution_are_refined_not_blurred(shape, monkeypatch):
    """σ_min/σ_max = 1e-9: the Gram (σ² down to 1e-18, below float64's 2e-16) cannot resolve the
    bottom components — squaring would leave errors ~eps·σ_max²/σ_min ≈ 1e-7 — so they are refined
    by inverse iteration on the QR factor, and no full SVD is taken. Tolerance 1e-13 absolute
    (σ_max = 1): a backward-stable float64 method is within ~n·eps·σ_max ≈ 1e-14."""
    W, (U, S, V) = _graded(*shape, smallest=1e-9)
    monkeypatch.setattr(decompose, "_full_svd", lambda *a, **k: pytest.fail("took the full SVD"))
    r = 4
    f = factorize(W, lambda _: identity_context(), want=(Take.BOTTOM, r))
    ref = (U[:, -r:] * S[-r:]) @ V[:, -r:].T  # norm ~4e-9
    assert (f.product() - ref).norm() < 1e-13
    torch.testing.assert_close(f.S, S[-r:], rtol=0, atol=1e-14)


def test_refinement_that_does_not_settle_falls_back_to_the_full_svd(monkeypatch):
    W, (U, S, V) = _graded(64, 64, smallest=1e-9)
    monkeypatch.setattr(linalg, "REFINE_MAX_ITER", 1)  # one step cannot show convergence
    calls = []
    full = decompose._full_svd
    monkeypatch.setattr(decompose, "_full_svd", lambda *a, **k: calls.append(1) or full(*a, **k))
    f = factorize(W, lambda _: identity_context(), want=(Take.BOTTOM, 4))
    assert calls == [1]
    ref = (U[:, -4:] * S[-4:]) @ V[:, -4:].T
    assert (f.product() - ref).norm() < 1e-13


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


def test_all_finite_sees_nan_and_both_infinities():
    from svdadapt.linalg import all_finite

    x = torch.randn(50, 30)
    assert all_finite(x) and all_finite(torch.empty(0))
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[7, 3] = bad
        assert not all_finite(y) and not all_finite(y.double()) and not all_finite(y.bfloat16())
