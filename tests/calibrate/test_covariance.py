"""Covariances and mean |x| against a float64 reference built from captured layer inputs."""

import pytest
import torch

from svdadapt import SvdadaptError, collect_covariances
from svdadapt.assets import tiny_model

from ..helpers import captured_reference, padded_batches

EXPECTED_SHARING = {
    "llama": [
        {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"},
        {"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"},
    ],
    "bert": [
        {
            "encoder.layer.0.attention.self.query",
            "encoder.layer.0.attention.self.key",
            "encoder.layer.0.attention.self.value",
        }
    ],
    "gpt2": [],
}


@pytest.mark.parametrize("kind", ["llama", "bert", "gpt2"])
@pytest.mark.parametrize("mode", ["full", "blockwise"])
def test_covariance_matches_float64_reference(kind, mode):
    model = tiny_model(kind, dtype=torch.float64)
    batches = padded_batches()
    reference = captured_reference(model, batches)
    store = collect_covariances(model, batches, mode=mode, store_dtype=torch.float64)
    assert set(store.modules) == set(reference)
    assert store.num_tokens == sum(int(b["attention_mask"].sum()) for b in batches)
    for name, (cov, mean_abs) in reference.items():
        # float64 model and sums: agreement to rounding of the summation order
        torch.testing.assert_close(store.covariance(name), cov, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(store.mean_abs(name), mean_abs, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", ["llama", "bert", "gpt2"])
def test_layers_reading_one_input_share_one_covariance(kind):
    store = collect_covariances(tiny_model(kind), padded_batches())
    for expected in EXPECTED_SHARING[kind]:
        first = next(iter(expected))
        assert set(store.shared_with(first)) == expected
    groups_with_many = [k for k in store.groups if len(store.members(k)) > 1]
    assert len(groups_with_many) == 2 * len(EXPECTED_SHARING[kind])  # two blocks each


def test_default_float32_store_rounds_the_float64_means_once():
    model = tiny_model("bert", dtype=torch.float64)
    batches = padded_batches()
    exact = collect_covariances(model, batches, store_dtype=torch.float64)
    stored = collect_covariances(model, batches)
    assert stored.covariance("encoder.layer.0.attention.self.query").dtype == torch.float32
    for name in exact.modules:
        torch.testing.assert_close(stored.covariance(name), exact.covariance(name).float(), rtol=0, atol=0)


def test_float32_model_matches_reference_within_float32_rounding():
    model = tiny_model("llama")
    batches = padded_batches()
    reference = captured_reference(model, batches)
    store = collect_covariances(model, batches, accumulate_dtype=torch.float32)
    for name, (cov, _) in reference.items():
        err = (store.covariance(name).double() - cov).abs().max() / cov.abs().max()
        assert err < 1e-5  # float32 products and sums over ~50 tokens


def test_padding_never_enters_a_covariance():
    model = tiny_model("llama", dtype=torch.float64)
    padded = padded_batches()
    # the same real tokens, one unpadded sample per batch
    unpadded = []
    for batch in padded:
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            n = int(mask.sum())
            unpadded.append({"input_ids": ids[None, :n], "attention_mask": mask[None, :n]})
    a = collect_covariances(model, padded, store_dtype=torch.float64)
    b = collect_covariances(model, unpadded, store_dtype=torch.float64)
    assert a.num_tokens == b.num_tokens
    for name in a.modules:
        torch.testing.assert_close(a.covariance(name), b.covariance(name), rtol=1e-10, atol=1e-14)


def test_blockwise_and_full_agree_on_a_float32_model():
    model = tiny_model("gpt2")
    batches = padded_batches()
    full = collect_covariances(model, batches, mode="full")
    blockwise = collect_covariances(model, batches, mode="blockwise")
    for name in full.modules:
        torch.testing.assert_close(full.covariance(name), blockwise.covariance(name), rtol=1e-6, atol=1e-9)


def test_target_patterns_select_layers():
    model = tiny_model("llama")
    store = collect_covariances(model, padded_batches(), targets=["q_proj", "re:.*mlp\\.down_proj"])
    assert sorted(store.modules) == sorted(
        [f"model.layers.{i}.self_attn.q_proj" for i in range(2)] + [f"model.layers.{i}.mlp.down_proj" for i in range(2)]
    )


def test_non_finite_activation_names_the_layer():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight[0, 0] = float("inf")
    with pytest.raises(SvdadaptError, match=r"model\.layers\.1\.mlp\.(gate_proj|up_proj)"):
        collect_covariances(model, padded_batches(), mode="full")
