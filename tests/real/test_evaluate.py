"""`evaluate_model` on the real embedded SmolLM2-135M-Instruct, with few windows and examples."""

import math

import pytest


@pytest.mark.slow
def test_smollm2_perplexity_and_polarity(smollm2_dir):
    from svdadapt.evaluate.settings import EvalSettings
    from svdadapt.evaluate.suite import evaluate_model
    from svdadapt.models import load_model

    loaded = load_model(str(smollm2_dir))
    results = evaluate_model(
        loaded.model, loaded.tokenizer, ["wiki-heldout"], ["polarity-instruct"],
        EvalSettings(seq_len=256, max_windows=2, limit=6), progress=False,
    )  # fmt: skip
    ppl = results["perplexity"]["wiki-heldout"]
    assert ppl["windows"] == 2 and ppl["tokens"] == 2 * 255  # SmolLM2's tokenizer adds no BOS
    assert 3 < ppl["perplexity"] < 100 and math.isclose(math.exp(ppl["nll"]), ppl["perplexity"])
    polarity = results["tasks"]["polarity-instruct"]
    assert polarity["examples"] == 6 and polarity["template"] == "chat" and 0 <= polarity["accuracy"] <= 1
