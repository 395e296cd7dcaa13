"""The lora row's L2 penalty on its weight change (``l2_init``, the ``l2-init`` loss): the term
against a float64 ‖BA‖²_F, and off by default."""

from types import SimpleNamespace

import pytest
import torch

from svdadapt.adapters.losses import LOSSES, weight_change_terms
from svdadapt.methods import get_method


def adapter(out: int, rank: int, inp: int, seed: int) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(rank, inp, generator=g)  # (r, in)
    B = torch.randn(out, rank, generator=g)  # (out, r)
    return SimpleNamespace(lora_A=SimpleNamespace(weight=A), lora_B=SimpleNamespace(weight=B))


def test_weight_change_term_is_the_summed_squared_frobenius_norm_of_BA():
    layers = [adapter(24, 4, 16, 0), adapter(8, 4, 32, 1)]
    reference = sum(float(torch.linalg.norm(a.lora_B.weight.double() @ a.lora_A.weight.double()) ** 2) for a in layers)
    # float32 r×r Grams against the float64 out×in product: a few float32 ulps of the sum
    assert float(weight_change_terms(layers)["weight_change"]) == pytest.approx(reference, rel=1e-5)
    regularizer = LOSSES["l2-init"].regularizer({"l2_init": 0.5})
    total, terms = regularizer.over(layers)
    assert float(total) == pytest.approx(0.5 * reference, rel=1e-5) and set(terms) == {"weight_change"}


def test_the_lora_row_owns_the_penalty_off_by_default():
    row = get_method("lora")
    assert row.loss == "l2-init" and row.stage_values("train") == {"l2_init": 0.0}
    assert get_method("lora", l2_init=0.1).stage_values("train") == {"l2_init": 0.1}
    # off costs nothing: a loss whose every weight is zero is no regularizer (no Grams, no sync per step)
    assert LOSSES["l2-init"].regularizer(row.stage_values("train")) is None
    assert LOSSES["kasa"].regularizer({"beta": 0.0, "gamma": 0.0}) is None
