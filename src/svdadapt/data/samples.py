"""Corpus → tokenized samples, seeded and reproducible.

Text corpora are tokenized once and cut into random windows of exactly ``seq_len`` tokens (the
CorDA seed's random windows, drawn in tokens rather than characters). Instruction corpora give one
example per sample, rendered with a template and cut at ``seq_len``; ``prompt_len`` marks where
the response starts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..errors import SvdadaptError
from .sources import Corpus
from .templates import get_template


@dataclass
class Sample:
    input_ids: list[int]
    prompt_len: int = 0  # tokens before the response (0 for plain text)


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Does the tokenizer put a BOS token in front of what it encodes?"""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def tokenize_documents(documents: list[str], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """All documents as one token stream, separated by the tokens of a blank line."""
    separator = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    chunk = 512
    for start in range(0, len(documents), chunk):
        encoded = tokenizer(documents[start : start + chunk], add_special_tokens=False, verbose=False)["input_ids"]
        for ids in encoded:
            if stream:
                stream.extend(separator)
            stream.extend(ids)
    return stream


def text_windows(
    corpus: Corpus, tokenizer: PreTrainedTokenizerBase, num_samples: int, seq_len: int, seed: int
) -> list[Sample]:
    """``num_samples`` random windows of ``seq_len`` tokens (a BOS first if the tokenizer adds one)."""
    stream = tokenize_documents(corpus.documents, tokenizer)
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
    body = seq_len - len(bos)
    if len(stream) < body:
        raise SvdadaptError(f"{corpus.where} has {len(stream)} tokens, fewer than --seq-len {seq_len}; lower --seq-len")
    rng = random.Random(seed)
    starts = [rng.randint(0, len(stream) - body) for _ in range(num_samples)]
    return [Sample(bos + stream[s : s + body]) for s in starts]


def example_samples(
    corpus: Corpus,
    tokenizer: PreTrainedTokenizerBase,
    num_samples: int,
    seq_len: int,
    seed: int,
    template: str | None = None,
) -> list[Sample]:
    """``num_samples`` distinct examples (all of them if fewer), rendered and tokenized."""
    tmpl = get_template(template, tokenizer)
    rng = random.Random(seed)
    indices = rng.sample(range(len(corpus)), min(num_samples, len(corpus)))
    samples = []
    for example in corpus.examples(indices):
        prompt, response = tmpl.render(example, tokenizer)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        ids = (prompt_ids + response_ids)[:seq_len]
        samples.append(Sample(ids, min(len(prompt_ids), len(ids))))
    return samples


def make_samples(
    corpus: Corpus,
    tokenizer: PreTrainedTokenizerBase,
    num_samples: int,
    seq_len: int,
    seed: int = 0,
    template: str | None = None,
) -> list[Sample]:
    """Samples of either kind of corpus."""
    if num_samples <= 0:
        raise SvdadaptError(f"--samples must be positive, got {num_samples}")
    if seq_len <= 0:
        raise SvdadaptError(f"--seq-len must be positive, got {seq_len}")
    if corpus.kind == "text":
        return text_windows(corpus, tokenizer, num_samples, seq_len, seed)
    return example_samples(corpus, tokenizer, num_samples, seq_len, seed, template)
