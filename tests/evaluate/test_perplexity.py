"""Perplexity against a hand-computed float64 reference, with and without a BOS per window."""

import math

import pytest
import torch

from svdadapt.assets import news_text, tiny_model, tiny_tokenizer
from svdadapt.evaluate import evaluation_windows, perplexity
from svdadapt.evaluate.settings import EvalSettings
from svdadapt.evaluate.suite import evaluate_model

SEQ_LEN = 24


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ppl") / "news.txt"
    path.write_text(news_text()[:3000])
    return path


@pytest.fixture(scope="module")
def model64():
    return tiny_model("llama", seed=3).double()


def bos_tokenizer():
    from tokenizers.processors import TemplateProcessing

    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    return tok


def reference(model, tok, text, seq_len, bos, max_windows):
    """exp(mean CE) over windows of seq_len tokens cut from one tokenization of the text; with a BOS,
    each window is BOS + seq_len - 1 text tokens and every text token is predicted; without, the
    window's first token is context only (as in CorDA's evaluation)."""
    stream = tok(text, add_special_tokens=False)["input_ids"]
    prefix = [tok.bos_token_id] if bos else []
    body = seq_len - len(prefix)
    nll, count = 0.0, 0
    for w in range(min(len(stream) // body, max_windows)):
        ids = prefix + stream[w * body : (w + 1) * body]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()  # (L, V)
        logp = torch.log_softmax(logits, dim=-1)
        for t in range(1, seq_len):  # token t predicted from positions < t
            nll -= float(logp[t - 1, ids[t]])
            count += 1
    return math.exp(nll / count), count


@pytest.mark.parametrize("bos", [False, True])
def test_perplexity_matches_a_float64_hand_computation(text_file, model64, bos):
    tok = bos_tokenizer() if bos else tiny_tokenizer()
    windows = evaluation_windows(str(text_file), tok, SEQ_LEN, max_windows=5, choice="first")
    assert windows.ids.shape == (5, SEQ_LEN)
    assert bool((windows.ids[:, 0] == tok.bos_token_id).all()) == bos
    result = perplexity(model64, windows, batch_size=2, progress=False)
    expected, count = reference(model64, tok, text_file.read_text(), SEQ_LEN, bos, 5)
    assert result.tokens == count == 5 * (SEQ_LEN - 1)
    assert result.perplexity == pytest.approx(expected, rel=1e-10)


def test_batch_size_does_not_change_the_result(text_file):
    model = tiny_model("llama", seed=3)
    windows = evaluation_windows(str(text_file), tiny_tokenizer(), SEQ_LEN, max_windows=6)
    one = perplexity(model, windows, batch_size=1, progress=False).perplexity
    assert perplexity(model, windows, batch_size=4, progress=False).perplexity == pytest.approx(one, rel=1e-5)


def test_evaluate_model_on_an_in_memory_model(text_file, model64):
    tok = tiny_tokenizer()
    results = evaluate_model(
        model64,
        tok,
        [str(text_file), "news"],
        settings=EvalSettings(seq_len=SEQ_LEN, max_windows=3, batch_size=2, windows="first"),
        progress=False,
    )
    expected, _ = reference(model64, tok, text_file.read_text(), SEQ_LEN, False, 3)
    assert results["perplexity"][str(text_file)]["perplexity"] == pytest.approx(expected, rel=1e-10)
    assert results["perplexity"]["news"]["windows"] == 3 and results["tasks"] == {}


def test_default_window_is_capped_at_the_model_limit(model64):
    results = evaluate_model(model64, tiny_tokenizer(), ["news"], settings=EvalSettings(max_windows=1), progress=False)
    assert results["perplexity"]["news"]["seq_len"] == 256  # the tiny model's positions, below 2048


def test_capped_windows_spread_over_every_document_of_a_held_out_set():
    """wiki-heldout is 24 articles: the first N windows come from its first article or two, spread
    windows from every article a window starts in; uncapped, both choices are the same windows; each
    window's NLL and document are recorded, and their mean is the reported NLL."""
    from svdadapt.data import resolve

    tok = tiny_tokenizer()
    articles = len(resolve("wiki-heldout").documents)
    spread = evaluation_windows("wiki-heldout", tok, 256, max_windows=2 * articles, choice="spread")
    first = evaluation_windows("wiki-heldout", tok, 256, max_windows=2 * articles, choice="first")
    every = evaluation_windows("wiki-heldout", tok, 256, choice="first").documents
    assert set(spread.documents) == set(every) and len(set(every)) > articles * 3 // 4
    assert len(set(first.documents)) < articles // 2
    whole = [evaluation_windows("wiki-heldout", tok, 512, choice=c).ids for c in ("spread", "first")]
    assert torch.equal(*whole)
    result = perplexity(tiny_model("llama", seed=3), spread, batch_size=8, progress=False)
    assert len(result.window_nll) == len(result.documents) == 2 * articles
    assert math.isclose(sum(result.window_nll) / len(result.window_nll), result.nll, rel_tol=1e-12)
    assert result.choice == "spread"
