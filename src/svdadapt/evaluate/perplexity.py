"""Perplexity on text, in non-overlapping windows as the CorDA repository evaluates WikiText-2/PTB.

The evaluation text (a source's evaluation split: wikitext2 → test, ptb → validation, bundled
``wiki-heldout``/``news``, or a local file) is joined by blank lines, tokenized once and cut into
consecutive windows of ``seq_len`` tokens. When the tokenizer normally starts sequences with a BOS
token, each window starts with one (and holds ``seq_len - 1`` text tokens), so every text token is
predicted from a proper start; without one, the window's first token is context only (as in the
CorDA repository). PPL = exp(total NLL / predicted tokens).

When ``max_windows`` caps the windows, ``spread`` (the default) takes them round robin over the
documents they start in — the first window of every document, then the second, ... — so a held-out
set of many documents is measured on all of them, not on its first; ``first`` takes the first ones.
Each window records the document it starts in and its own mean NLL, for intervals over documents
(e.g. a bootstrap).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .. import backend
from ..data.samples import adds_bos
from ..data.sources import EVAL_SPLITS, resolve
from ..errors import SvdadaptError, require
from ..streaming import BlockStream

WINDOW_CHOICES = ("spread", "first")


@dataclass
class Windows:
    source: str
    ids: torch.Tensor  # (n, seq_len)
    documents: list[int] | None = None  # per window, the index of the document it starts in
    choice: str = "first"  # which windows, when capped: spread or first


@dataclass
class PerplexityResult:
    source: str
    perplexity: float
    nll: float  # mean negative log-likelihood per predicted token
    tokens: int  # predicted tokens
    windows: int
    seq_len: int
    choice: str = "first"  # spread or first, when the windows were capped
    documents: list[int] | None = None  # per window: the document it starts in
    window_nll: list[float] | None = None  # per window: its mean NLL per predicted token

    def as_dict(self) -> dict:
        return dict(vars(self))


def evaluation_windows(
    source: str, tokenizer: PreTrainedTokenizerBase, seq_len: int, max_windows: int | None = None,
    choice: str = "spread",
) -> Windows:  # fmt: skip
    """Tokenize a source's evaluation text once and cut it into windows: all of them, or
    ``max_windows`` of them chosen by ``choice`` (``spread`` evenly over the text, or ``first``)."""
    require(seq_len >= 2, f"a perplexity window needs at least 2 tokens, got {seq_len}")
    corpus = resolve(source, split=EVAL_SPLITS.get(source))
    if corpus.kind != "text":
        raise SvdadaptError(f"{source} holds instruction examples, not text; perplexity needs a text source")
    if choice not in WINDOW_CHOICES:
        raise SvdadaptError(f"windows must be one of {', '.join(WINDOW_CHOICES)}, got {choice!r}")
    text = "\n\n".join(corpus.documents)
    stream = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
    body = seq_len - len(bos)
    available = len(stream) // body
    count = available if max_windows is None else min(available, max_windows)
    if count == 0:
        raise SvdadaptError(f"{source} has {len(stream)} tokens, fewer than one window of {seq_len}; lower --seq-len")
    starts = _document_starts(corpus.documents, tokenizer)
    document_of = [bisect.bisect_right(starts, i * body) - 1 for i in range(available)]  # where each starts
    if choice == "spread" and count < available:  # round robin over the documents: every one gets a window
        by_document: dict[int, list[int]] = {}
        for index, document in enumerate(document_of):
            by_document.setdefault(document, []).append(index)
        rounds = itertools.zip_longest(*by_document.values())
        chosen = sorted([i for round_ in rounds for i in round_ if i is not None][:count])
    else:
        chosen = list(range(count))
    rows = [bos + stream[i * body : (i + 1) * body] for i in chosen]
    return Windows(source, torch.tensor(rows, dtype=torch.long), [document_of[i] for i in chosen], choice)


def _document_starts(documents: list[str], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token position where each document starts in the joined text (counted per document and
    separator: within a few tokens of the joint tokenization, enough to tell documents apart)."""
    separator = len(tokenizer("\n\n", add_special_tokens=False, verbose=False)["input_ids"])
    starts, position = [], 0
    for document in documents:
        starts.append(position)
        position += len(tokenizer(document, add_special_tokens=False, verbose=False)["input_ids"]) + separator
    return starts


@torch.no_grad()
def perplexity(model: nn.Module, windows: Windows, batch_size: int = 1, progress: bool = True) -> PerplexityResult:
    """PPL of ``model`` over prepared windows (float64 accumulation of the NLL)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    per_window: list[float] = []
    n, seq_len = windows.ids.shape
    try:
        for start in tqdm(range(0, n, batch_size), desc=f"perplexity {windows.source}", disable=not progress):
            ids = windows.ids[start : start + batch_size].to(device)
            with backend.on(device).forward_products():
                logits = model(input_ids=ids, use_cache=False).logits  # (b, L, vocab)
            per_window += _window_nll(logits, ids)
    finally:
        model.train(was_training)
    return _result(windows, per_window)


def _result(windows: Windows, per_window: list[float]) -> PerplexityResult:
    """The perplexity over windows of equal length from each window's mean NLL (float64)."""
    n, seq_len = windows.ids.shape
    mean = math.fsum(per_window) / len(per_window)
    counted = n * (seq_len - 1)
    return PerplexityResult(
        windows.source, math.exp(mean), mean, counted, n, seq_len, windows.choice, windows.documents, per_window
    )


def _window_nll(logits: torch.Tensor, ids: torch.Tensor) -> list[float]:
    """Each window's mean NLL of tokens 1.. of ``ids`` (b, L) under ``logits`` (b, L, vocab)."""
    pred = logits[:, :-1]  # (b, L - 1, vocab): position t predicts token t + 1
    pred = pred if pred.dtype == torch.float64 else pred.float()
    target = ids[:, 1:].to(pred.device)
    nll = nn.functional.cross_entropy(pred.transpose(1, 2), target, reduction="none")  # (b, L - 1)
    return nll.double().mean(dim=1).tolist()


@torch.no_grad()
def streamed_perplexity(
    model: nn.Module,
    windows: Windows,
    placement: backend.Placement,
    batch_size: int = 1,
    progress: bool = True,
    change: Callable[[int, nn.Module], None] | None = None,
    hidden_dir=None,
) -> PerplexityResult:
    """:func:`perplexity` of a model whose blocks stream through the compute device one at a time
    (an offloaded model: :class:`svdadapt.streaming.BlockStream`); ``change(index, block)`` may edit
    block ``index``'s weights for this pass only (the model's own are never written)."""
    n, seq_len = windows.ids.shape
    batches = [{"input_ids": windows.ids[s : s + batch_size]} for s in range(0, n, batch_size)]
    per_window: list[float] = []
    was_training = model.training
    model.eval()

    def add(batch, outputs) -> None:
        per_window.extend(_window_nll(outputs.logits, batch["input_ids"]))

    try:
        with BlockStream(model, batches, placement=placement, hidden_dir=hidden_dir) as stream:
            blocks = len(stream.stack)
            for index in tqdm(range(blocks), desc=f"perplexity {windows.source}", unit="block", disable=not progress):
                stream.advance(index, change=(lambda block, i=index: change(i, block)) if change else None)
            stream.outputs(add)
    finally:
        model.train(was_training)
    return _result(windows, per_window)
