"""relative_error and weighted_error against float64 hand computations."""

import math

import torch

from svdadapt.quantize import relative_error, weighted_error


def _data(seed=0, out_f=12, in_f=20, n=200):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
    W_hat = W + 0.1 * torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
    X = torch.randn(n, in_f, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3, in_f, dtype=torch.float64)
    return W, W_hat, X


def test_relative_error_is_the_frobenius_ratio():
    W, W_hat, _ = _data()
    by_hand = math.sqrt(((W - W_hat) ** 2).sum().item() / (W**2).sum().item())
    assert abs(relative_error(W, W_hat) - by_hand) < 1e-14
    assert relative_error(W, W) == 0.0
    assert relative_error(torch.zeros(2, 2), torch.zeros(2, 2)) == 0.0
    assert abs(relative_error(W.float(), W_hat.float()) - by_hand) < 1e-6  # float32 inputs: their rounding


def test_weighted_error_is_the_error_on_the_calibration_inputs():
    W, W_hat, X = _data()
    C = X.T @ X / X.shape[0]  # (in, in)
    # the definition: outputs on the inputs themselves, ‖(W − Ŵ) Xᵀ‖ / ‖W Xᵀ‖
    on_inputs = (torch.linalg.matrix_norm((W - W_hat) @ X.T) / torch.linalg.matrix_norm(W @ X.T)).item()
    # and with an explicit symmetric square root of C
    values, vectors = torch.linalg.eigh(C)
    root = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
    with_root = (torch.linalg.matrix_norm((W - W_hat) @ root) / torch.linalg.matrix_norm(W @ root)).item()
    mine = weighted_error(W, W_hat, C)
    # float64: both references agree with it to a few hundred ulps of their norms
    assert abs(mine - on_inputs) < 1e-12 and abs(mine - with_root) < 1e-12
    assert abs(weighted_error(W, W_hat, torch.eye(20, dtype=torch.float64)) - relative_error(W, W_hat)) < 1e-14


def test_weighted_error_ignores_what_the_inputs_never_reach():
    W, _, X = _data(n=5)  # 5 samples: C has rank 5 of 20
    C = X.T @ X / 5
    _, _, Vh = torch.linalg.svd(X)
    null = Vh[5:].T  # (in, 15): directions no input has
    W_off = W + torch.randn(12, 15, dtype=torch.float64) @ null.T  # differs only there
    assert weighted_error(W, W_off, C) < 1e-7  # ≈ √(rounding of C's null space)
    assert relative_error(W, W_off) > 0.5
