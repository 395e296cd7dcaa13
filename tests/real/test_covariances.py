"""Integration: the real embedded SmolLM2 (first 2 decoder blocks) on bundled Wikipedia text."""

import pytest
import torch

from svdadapt import collect_covariances
from svdadapt.data import make_batches, make_samples, resolve
from svdadapt.models import load_model

from ..helpers import captured_reference

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trimmed():
    loaded = load_model("default")
    model = loaded.model
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    samples = make_samples(resolve("wiki"), loaded.tokenizer, num_samples=6, seq_len=64, seed=0)
    samples[1].input_ids = samples[1].input_ids[:40]  # one shorter sample: padding in its batch
    return model, make_batches(samples, 4, loaded.tokenizer.pad_token_id)


def test_real_model_covariances_match_the_float64_reference(trimmed):
    model, batches = trimmed
    reference = captured_reference(model, batches)
    for mode in ("blockwise", "full"):
        store = collect_covariances(model, batches, mode=mode)
        assert len(store.modules) == 14 and len(store.groups) == 8
        assert store.num_tokens == 6 * 64 - 24
        for name, (cov, mean_abs) in reference.items():
            # float32 activations, float32 products over ≤256 tokens, float64 sums
            err = (store.covariance(name) - cov).abs().max() / cov.abs().max()
            assert err < 2e-6, (mode, name, err)
            torch.testing.assert_close(store.mean_abs(name).double(), mean_abs, rtol=2e-6, atol=1e-9)
        assert set(store.shared_with("model.layers.1.self_attn.k_proj")) == {
            f"model.layers.1.self_attn.{p}_proj" for p in "qkv"
        }
