"""quantized_factors: plain quantizes the method's residual and keeps its factors; refine (LoftQ's
alternation) and cloq never end worse than plain, and more rounds never end worse than fewer; the
refit of each round is the best rank-r approximation; bad arguments are one line."""

import pytest
import torch

from svdadapt import SvdadaptError
from svdadapt.quantize import input_root, quantize_dequantize, quantized_factors, relative_error, weighted_error

pytest.importorskip("bitsandbytes")
RANK, SCALE = 4, 2.0


def _layer(seed=0, out_f=64, in_f=128, n=512):
    """A weight with a decaying spectrum and a few strong directions, and anisotropic inputs."""
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(out_f, out_f, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(in_f, out_f, generator=gen, dtype=torch.float64))
    S = 0.05 * torch.arange(1, out_f + 1, dtype=torch.float64) ** -0.6
    S[:3] *= 6
    W = (U * S) @ V.T  # (out, in)
    X = torch.randn(n, in_f, generator=gen, dtype=torch.float64) * torch.logspace(-1.5, 0.5, in_f, dtype=torch.float64)
    return W, X.T @ X / n


def _pissa(W):
    """PiSSA's factors as the build gives them: B = U √(S/s), A = √(S/s) Vᵀ."""
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    half = (S[:RANK] / SCALE).sqrt()
    return U[:, :RANK] * half, half[:, None] * Vh[:RANK]


def _lora(W):
    A = torch.rand(RANK, W.shape[1], generator=torch.Generator().manual_seed(5), dtype=torch.float64) - 0.5
    return torch.zeros(W.shape[0], RANK, dtype=torch.float64), A


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_plain_quantizes_the_residual_and_keeps_the_factors(kind):
    W, C = _layer()
    B, A = _pissa(W)
    layer = quantized_factors(W, B, A, SCALE, kind, "plain", covariance=C)
    assert torch.equal(layer.base, quantize_dequantize(W - SCALE * B @ A, kind))
    assert torch.equal(layer.b, B) and torch.equal(layer.a, A) and layer.rounds == 0
    W_hat = layer.base.double() + SCALE * B @ A
    assert layer.error == relative_error(W, W_hat) and layer.weighted_error == weighted_error(W, W_hat, C)
    # QPiSSA below QLoRA: the top components stay in float, the residual's grid is finer
    qlora = quantized_factors(W, *_lora(W), SCALE, kind, "plain")
    assert layer.error < qlora.error
    assert torch.equal(qlora.base, quantize_dequantize(W, kind))


@pytest.mark.parametrize("start", [_lora, _pissa])
def test_refine_never_ends_worse_and_more_rounds_never_hurt(start):
    W, _ = _layer(seed=1)
    B, A = start(W)
    plain = quantized_factors(W, B, A, SCALE, "nf4", "plain")
    errors = [quantized_factors(W, B, A, SCALE, "nf4", "refine", iters=k).error for k in (1, 2, 5)]
    assert errors[0] <= plain.error and errors == sorted(errors, reverse=True), (plain.error, errors)
    five = quantized_factors(W, B, A, SCALE, "nf4", "refine", iters=5)
    assert five.error == min(five.scores) and len(five.scores) == 1 + 2 * 5
    assert torch.equal(five.base, quantize_dequantize(five.base, "nf4"))  # the kept base is on the grid
    # LoftQ from zero beats QLoRA clearly on a weight with strong directions (measured 0.7×; 0.9 leaves room)
    if start is _lora:
        assert five.error < 0.9 * plain.error


def test_a_round_refits_the_best_rank_r_of_what_quantization_left():
    W, _ = _layer(seed=2)
    B, A = _lora(W)
    layer = quantized_factors(W, B, A, SCALE, "nf4", "refine", iters=1)
    Q = quantize_dequantize(W, "nf4").double()
    U, S, Vh = torch.linalg.svd(W - Q)
    best = (U[:, :RANK] * S[:RANK]) @ Vh[:RANK]  # Eckart–Young, float64 LAPACK
    if layer.rounds == 1 and torch.equal(layer.base, Q.float()):  # the kept iterate is (Q, refit)
        assert torch.allclose(SCALE * layer.b @ layer.a, best, rtol=0, atol=1e-10 * best.abs().max().item())
    assert layer.scores[1] == pytest.approx(relative_error(W, Q + best), rel=1e-9)


@pytest.mark.parametrize("start", [_lora, _pissa])
def test_cloq_is_best_on_the_calibration_inputs(start):
    W, C = _layer(seed=3)
    B, A = start(W)
    plain = quantized_factors(W, B, A, SCALE, "nf4", "plain", covariance=C)
    for rounds in (1, 4):
        cloq = quantized_factors(W, B, A, SCALE, "nf4", "cloq", iters=rounds, covariance=C)
        refine = quantized_factors(W, B, A, SCALE, "nf4", "refine", iters=rounds, covariance=C)
        assert cloq.weighted_error <= plain.weighted_error
        # as many rounds, on its own objective: below LoftQ's (which minimises the unweighted error).
        # Not a theorem, measured on this layer: 0.066 against 0.075 (lora, 4 rounds), 0.0114 against 0.0123 (pissa)
        assert cloq.weighted_error < refine.weighted_error
        assert torch.isfinite(cloq.b).all() and torch.isfinite(cloq.a).all() and cloq.base.dtype == torch.float32
    # R shared between layers instead of C: the same refit; without C itself no weighted error to report
    shared = quantized_factors(W, B, A, SCALE, "nf4", "cloq", iters=1, covariance=input_root(C))
    assert shared.weighted_error is None
    assert torch.allclose(shared.b @ shared.a, cloq_first_refit(W, B, A, C), rtol=0, atol=1e-12)


def cloq_first_refit(W, B, A, C):
    from svdadapt.quantize import weighted_best_rank

    Q = quantize_dequantize(W - SCALE * B @ A, "nf4").double()
    b, a = weighted_best_rank(W - Q, input_root(C), RANK, SCALE)
    return b @ a


def test_bad_arguments_are_one_line():
    W, C = _layer()
    B, A = _pissa(W)
    cases = [
        (dict(how="loftq"), "unknown quantized init 'loftq'"),
        (dict(how="refine", iters=-1), "between 0 and 100"),
        (dict(how="refine", iters=0), "at least one round"),
        (dict(how="cloq", iters=1), "needs the calibration covariance"),
        (dict(kind="nf3"), "unknown quantization 'nf3'; did you mean 'nf4'"),
    ]
    for kwargs, message in cases:
        args = dict(W=W, B=B, A=A, scale=SCALE, kind="nf4") | kwargs
        with pytest.raises(SvdadaptError, match=message):
            quantized_factors(**args)
    with pytest.raises(SvdadaptError, match="do not fit"):
        quantized_factors(W, A, B, SCALE, "nf4")
    with pytest.raises(SvdadaptError, match="non-finite"):
        quantized_factors(W * float("nan"), B, A, SCALE, "nf4")
    with pytest.raises(SvdadaptError, match="positive"):
        quantized_factors(W, B, A, 0.0, "nf4")
