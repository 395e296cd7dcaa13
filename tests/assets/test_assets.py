"""Embedded defaults: bundled texts, tiny models, and the real SmolLM2 / MiniLM that load offline."""

import pytest
import torch

from svdadapt.assets import (
    default_encoder_dir,
    polarity_examples,
    save_tiny_model,
    tiny_model,
    wiki_articles,
    wiki_text,
)
from svdadapt.targets import find_targets


def test_wiki_split_is_deterministic_and_disjoint():
    articles = wiki_articles()
    assert len(articles) > 100
    heldout = {a.title for a in articles if a.heldout}
    calibration = {a.title for a in articles if not a.heldout}
    assert heldout and calibration and not heldout & calibration
    assert 0.1 < len(heldout) / len(articles) < 0.35
    assert "Albert Einstein" in heldout  # sha1-based, fixed forever
    text = wiki_text(heldout=True)
    assert "'''" not in text and len(text) > 300_000


def test_polarity_is_200_balanced_labelled_sentences():
    examples = polarity_examples()
    assert len(examples) == 200
    assert sum(label == "positive" for _, label in examples) == 100


@pytest.mark.parametrize("kind", ["llama", "bert", "gpt2"])
def test_tiny_models_are_deterministic_and_reload(kind, tmp_path):
    a, b = tiny_model(kind, seed=3), tiny_model(kind, seed=3)
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na
    save_tiny_model(kind, tmp_path / kind, seed=3)
    from svdadapt.models import load_model

    loaded = load_model(str(tmp_path / kind))
    for (na, pa), (_, pb) in zip(a.named_parameters(), loaded.model.named_parameters()):
        assert torch.equal(pa, pb), na


def test_default_targets_skip_heads():
    names = set(find_targets(tiny_model("llama")))
    assert "lm_head" not in names and len(names) == 14
    bert = set(find_targets(tiny_model("bert")))
    assert "pooler.dense" not in bert and len(bert) == 12
    gpt2 = find_targets(tiny_model("gpt2"))
    assert type(gpt2["transformer.h.0.attn.c_attn"]).__name__ == "Conv1D"


@pytest.mark.slow
def test_default_model_is_a_real_smollm2(smollm2_dir):
    from svdadapt.models import load_model

    loaded = load_model("default")
    config = loaded.model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_key_value_heads) == (30, 576, 3)
    assert len(find_targets(loaded.model)) == 210
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(**ids).logits[0, -1]
    assert loaded.tokenizer.decode(logits.argmax()).strip() == "Paris"


@pytest.mark.slow
def test_default_encoder_is_a_real_minilm():
    from svdadapt.models import load_model

    assert (default_encoder_dir() / "config.json").is_file()
    loaded = load_model("default-encoder")
    assert loaded.model.config.model_type == "bert"
    names = find_targets(loaded.model)
    assert len(names) == 36 and "encoder.layer.0.attention.self.query" in names
