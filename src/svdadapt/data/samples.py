"""Corpus → tokenized samples, seeded and reproducible.

Text corpora are tokenized once and cut into random windows of exactly ``seq_len`` tokens (the
CorDA seed's random windows, drawn in tokens rather than characters). Instruction corpora give one
example per sample, rendered with a template and cut at ``seq_len``; ``prompt_len`` marks where
the response starts. A conversation gives one sample of all its turns, ``spans`` marking each
assistant turn's tokens; cut at ``seq_len``, it keeps whole leading turns (only a first response
too long for ``seq_len`` by itself is cut within, as a single response is).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from .. import backend
from ..errors import SvdadaptError
from .chat import Conversation
from .sources import Corpus
from .templates import get_template

TOKEN_BYTES = 40  # host memory per token of a sample (a list item and its int object), for the check below
MEMORY_SHARE = 0.5  # the samples may take at most this share of the host's free memory


def check_affordable(count: int, seq_len: int, where: str) -> None:
    """Refuse, before anything is made, samples that would not fit in host memory: no option value
    makes memory grow without bound (``--samples 1000000000``)."""
    free = backend.free_memory(torch.device("cpu"))
    need = count * seq_len * TOKEN_BYTES
    if free is not None and need > MEMORY_SHARE * free:
        raise SvdadaptError(
            f"{count} samples of up to {seq_len} tokens from {where} would take about {need / 2**30:.1f} GiB, more "
            f"than half of this machine's {free / 2**30:.1f} GiB free; lower --samples or --seq-len"
        )


@dataclass
class Sample:
    input_ids: list[int]
    prompt_len: int = 0  # tokens before the (first) response (0 for plain text)
    spans: tuple[tuple[int, int], ...] | None = None  # [start, end) of each response (None: prompt_len to the end)
    lost: int = 0  # response tokens left out to fit seq_len

    def responses(self) -> tuple[tuple[int, int], ...]:
        """[start, end) of the tokens of every response (the whole sample for plain text), in order."""
        if self.spans is not None:
            return self.spans
        return ((self.prompt_len, len(self.input_ids)),) if self.prompt_len < len(self.input_ids) else ()


def fit(segments: list[tuple[list[int], bool]], seq_len: int, whole_turns: bool) -> Sample:
    """Tokenized segments (ids, is a response) as one sample of at most ``seq_len`` tokens: cut at
    ``seq_len`` (an example), or (``whole_turns``, a conversation) whole leading segments up to the
    end of the last response that fits, a first response longer than what is left cut within."""
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    for part, labelled in segments:
        room = seq_len - len(ids)
        if len(part) > room and whole_turns and spans:
            ids = ids[: spans[-1][1]]  # the turns after the last response that fits are left out whole
            break
        start = len(ids)
        ids += part[:room]
        if labelled and len(ids) > start:
            spans.append((start, len(ids)))
        if len(part) > room:
            break
    total = sum(len(part) for part, labelled in segments if labelled)
    kept = sum(end - start for start, end in spans)
    prompt_len = spans[0][0] if spans else len(ids)
    return Sample(ids, prompt_len, tuple(spans) if whole_turns else None, total - kept)


def adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Does the tokenizer put a BOS token in front of what it encodes?"""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def _chars_per_token(text: str, tokenizer: PreTrainedTokenizerBase) -> float:
    probe = text[:20000]
    count = len(tokenizer(probe, add_special_tokens=False, verbose=False)["input_ids"])
    return max(len(probe) / max(count, 1), 1.0)


def _window(text: str, start: int, span: int, body: int, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """``body`` tokens of ``text`` read cyclically from character ``start`` (its first, likely
    partial, word dropped), widening the character span until enough tokens come out."""
    cyclic = text + "\n\n" + text
    while True:
        ids = tokenizer(cyclic[start : start + span], add_special_tokens=False, verbose=False)["input_ids"]
        ids = ids[1:] if start > 0 else ids
        if len(ids) >= body:
            return ids[:body]
        span *= 2


def text_windows(
    corpus: Corpus, tokenizer: PreTrainedTokenizerBase, num_samples: int, seq_len: int, seed: int
) -> list[Sample]:
    """``num_samples`` random windows of exactly ``seq_len`` tokens (a BOS first if the tokenizer
    adds one), as the CorDA seed draws them: a random character offset, then tokens from there.
    Only the windows are tokenized, so a large corpus costs nothing extra."""
    text = "\n\n".join(corpus.documents)
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
    body = seq_len - len(bos)
    ratio = _chars_per_token(text, tokenizer)
    span = int(body * ratio * 1.3) + 64
    if len(text) < 2 * span:  # short corpus: make sure it holds a whole window at all
        available = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if available < body:
            raise SvdadaptError(
                f"{corpus.where} has {available} tokens, fewer than --seq-len {seq_len}; lower --seq-len"
            )
    if num_samples > len(text):  # more windows than the text has places to start one
        print(f"svdadapt: note: {corpus.where} supplies at most {len(text)} distinct windows; using that many")
        num_samples = len(text)
    check_affordable(num_samples, seq_len, corpus.where)
    rng = random.Random(seed)
    starts = [rng.randint(0, len(text) - 1) for _ in range(num_samples)]
    return [Sample(bos + _window(text, start, span, body, tokenizer)) for start in starts]


def example_samples(
    corpus: Corpus,
    tokenizer: PreTrainedTokenizerBase,
    num_samples: int,
    seq_len: int,
    seed: int,
    template: str | None = None,
) -> list[Sample]:
    """``num_samples`` distinct examples (all of them if fewer), rendered and tokenized; a
    conversation whole, each assistant turn a response."""
    tmpl = get_template(template, tokenizer)
    check_affordable(min(num_samples, len(corpus)), seq_len, corpus.where)
    rng = random.Random(seed)
    indices = rng.sample(range(len(corpus)), min(num_samples, len(corpus)))
    samples = []
    for index, item in zip(indices, corpus.examples(indices)):
        try:
            segments = tmpl.segments(item, tokenizer)
        except TemplateError as exc:  # the chat template's own refusal, e.g. "roles must alternate"
            raise SvdadaptError(f"record {index + 1} of {corpus.where}: the chat template refuses it ({exc})") from None
        tokenized = [(tokenizer(text, add_special_tokens=False)["input_ids"], labelled) for text, labelled in segments]
        samples.append(fit(tokenized, seq_len, whole_turns=isinstance(item, Conversation)))
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
    if corpus.kind == "text":
        return text_windows(corpus, tokenizer, num_samples, seq_len, seed)
    return example_samples(corpus, tokenizer, num_samples, seq_len, seed, template)
