"""The block-triangle Gram accumulator against a float64 xᵀx."""

import pytest
import torch

from svdadapt.backend import gram as gram_module
from svdadapt.calibrate import GramAccumulator


@pytest.mark.parametrize("dim", [5, 64, 300, 577])
def test_block_triangle_equals_full_gram_in_float64(dim):
    gen = torch.Generator().manual_seed(dim)
    acc = GramAccumulator(dim, torch.float64)
    chunks = [torch.randn(n, dim, generator=gen, dtype=torch.float64) for n in (17, 1, 40)]
    for x in chunks:
        acc.add(x)
    x = torch.cat(chunks)
    # float64 in, float64 sums: only summation order differs from the reference
    torch.testing.assert_close(acc.full_gram(), x.T @ x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(acc.abs_sum, x.abs().sum(0), rtol=1e-12, atol=1e-12)
    assert acc.count == x.shape[0]


def test_state_round_trip_continues_identically():
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(10, 40, generator=gen, dtype=torch.float64) for _ in range(4)]
    straight = GramAccumulator(40)
    for x in xs:
        straight.add(x)
    first = GramAccumulator(40)
    for x in xs[:2]:
        first.add(x)
    second = GramAccumulator(40)
    second.load_state(first.checkpoint())
    for x in xs[2:]:
        second.add(x)
    assert torch.equal(second.gram, straight.gram)
    assert torch.equal(second.abs_sum, straight.abs_sum)
    assert second.count == straight.count


@pytest.mark.parametrize(("saved_at", "resumed_at"), [(96, 192), (192, 96), (64, 192), (192, 192)])
def test_a_checkpoint_resumes_at_another_block_width(saved_at, resumed_at, monkeypatch):
    """Which entries of the running triangle hold sums depends on the block width (the back end's);
    a checkpoint taken at one resumes at any other."""
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(30, 577, generator=gen, dtype=torch.float64) for _ in range(4)]
    monkeypatch.setattr(gram_module, "GRAM_BLOCK", saved_at)
    first = GramAccumulator(577)
    for x in xs[:2]:
        first.add(x)
    saved = first.checkpoint()
    monkeypatch.setattr(gram_module, "GRAM_BLOCK", resumed_at)
    straight = GramAccumulator(577)
    for x in xs:
        straight.add(x)
    resumed = GramAccumulator(577)
    resumed.load_state(saved)
    for x in xs[2:]:
        resumed.add(x)
    # float64 throughout: only the order of the sums differs
    torch.testing.assert_close(resumed.full_gram(), straight.full_gram(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("former", [96, 192])
def test_a_triangle_only_checkpoint_of_a_former_width_resumes(former, monkeypatch):
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(30, 577, generator=gen, dtype=torch.float64) for _ in range(2)]
    monkeypatch.setattr(gram_module, "GRAM_BLOCK", former)
    old = GramAccumulator(577)
    old.add(xs[0])
    legacy = {k: v.clone() for k, v in old.state().items()}  # what earlier versions saved
    monkeypatch.undo()
    resumed = GramAccumulator(577)
    resumed.load_state(legacy)
    resumed.add(xs[1])
    reference = torch.cat(xs).T @ torch.cat(xs)
    torch.testing.assert_close(resumed.full_gram(), reference, rtol=1e-12, atol=1e-12)
