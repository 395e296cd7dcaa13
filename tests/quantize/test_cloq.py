"""CLoQ's closed form is the optimum of ‖(E − s·B·A)·C^{1/2}‖_F over rank r: it attains the
Eckart–Young bound (no rank-r L can do better than the tail of E·C^{1/2}'s singular values), random
perturbations only make it worse, and float64 alternating least squares from a random start comes
to the same value. With C singular and no damping, the pseudo-inverse solution still attains it."""

import math

import pytest
import torch

from svdadapt import SvdadaptError
from svdadapt.quantize import input_root, weighted_best_rank

RANK, SCALE = 3, 2.0


def _data(n=400, out_f=16, in_f=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    E = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
    mix = torch.randn(in_f, in_f, generator=gen, dtype=torch.float64) * torch.logspace(
        -2, 0.5, in_f, dtype=torch.float64
    )
    X = torch.randn(n, in_f, generator=gen, dtype=torch.float64) @ mix  # correlated, anisotropic inputs
    return E, X.T @ X / n


def _objective(E, B, A, C):
    D = E - SCALE * B @ A  # (out, in)
    return math.sqrt(((D @ C) * D).sum().item())


def _bound(E, C, r):
    """min over rank-r L of ‖(E − L)·C^{1/2}‖ = √(Σ_{i>r} σ_i²(E·C^{1/2})) (Eckart–Young)."""
    values, vectors = torch.linalg.eigh(C)
    root = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T  # symmetric C^{1/2}
    S = torch.linalg.svdvals(E @ root)
    return math.sqrt((S[r:] ** 2).sum().item())


def _damped(C, damping):
    return C + damping * C.diagonal().mean() * torch.eye(C.shape[0], dtype=torch.float64)


@pytest.mark.parametrize("damping", [0.0, 0.01])
def test_closed_form_attains_the_eckart_young_bound(damping):
    E, C = _data()
    B, A = weighted_best_rank(E, input_root(C, damping), RANK, SCALE)
    assert B.shape == (16, RANK) and A.shape == (RANK, 24)
    target = _damped(C, damping)  # the objective it minimises: C damped as the rest of svdadapt damps it
    # float64: the bound and the attained value agree to ~1e-12 relative (eigh + SVD rounding)
    assert abs(_objective(E, B, A, target) - _bound(E, target, RANK)) < 1e-10 * _bound(E, target, 0)
    # even split: B and A carry the same singular values (‖B_i‖ = ‖A_i R‖)
    assert torch.allclose(B.norm(dim=0), (A @ input_root(C, damping).root).norm(dim=1), rtol=1e-10)


def test_random_perturbations_only_make_it_worse():
    E, C = _data(seed=1)
    B, A = weighted_best_rank(E, input_root(C, 0.0), RANK, SCALE)
    best = _objective(E, B, A, C)
    gen = torch.Generator().manual_seed(7)
    for size in (1e-1, 1e-3, 1e-5):
        for _ in range(20):
            dB = torch.randn(B.shape, generator=gen, dtype=torch.float64) * size * B.abs().mean()
            dA = torch.randn(A.shape, generator=gen, dtype=torch.float64) * size * A.abs().mean()
            assert _objective(E, B + dB, A + dA, C) >= best * (1 - 1e-13)


def test_alternating_least_squares_finds_the_same_optimum():
    """Float64 ALS on B, A (each step exact least squares in the weighted norm) from a random start."""
    E, C = _data(seed=2)
    B_cf, A_cf = weighted_best_rank(E, input_root(C, 0.0), RANK, SCALE)
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(RANK, 24, generator=gen, dtype=torch.float64)
    for _ in range(500):
        B = E @ C @ A.T @ torch.linalg.inv(A @ C @ A.T) / SCALE  # argmin_B ‖(E − sBA) C^{1/2}‖
        A = torch.linalg.lstsq(B, E).solution / SCALE  # argmin_A: C invertible, so the plain least squares
    closed, als = _objective(E, B_cf, A_cf, C), _objective(E, B, A, C)
    assert closed <= als * (1 + 1e-12)  # nothing found beats the closed form
    assert als <= closed * (1 + 1e-8)  # and ALS converges onto it (500 steps: well below 1e-8 here)
    # the same product, not only the same value (unique: σ_r > σ_{r+1} here)
    assert torch.allclose(SCALE * B @ A, SCALE * B_cf @ A_cf, rtol=0, atol=1e-6 * E.abs().max().item())


def test_singular_covariance_without_damping_uses_the_pseudo_inverse():
    E, C = _data(n=10, seed=4)  # 10 samples in 24 dimensions: rank 10
    root = input_root(C, 0.0)
    B, A = weighted_best_rank(E, root, RANK, SCALE)
    assert torch.isfinite(A).all() and torch.isfinite(B).all()
    assert abs(_objective(E, B, A, C) - _bound(E, C, RANK)) < 1e-9 * _bound(E, C, 0)
    # nothing of L lies where the inputs never go: A's rows are in the span of the samples
    _, _, Vh = torch.linalg.svd(C)
    null = Vh[10:].T  # (in, 14)
    assert (A @ null).abs().max() < 1e-8 * A.abs().max()


def test_bad_covariances_are_one_line():
    with pytest.raises(SvdadaptError, match="non-finite"):
        input_root(torch.full((4, 4), float("nan")))
    with pytest.raises(SvdadaptError, match="recalibrate"):
        input_root(torch.zeros(4, 4))
