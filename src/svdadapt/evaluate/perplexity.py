"""Perplexity on text, in non-overlapping windows as the CorDA repository evaluates WikiText-2/PTB.

The evaluation text (a source's evaluation split: wikitext2 → test, ptb → validation, bundled
``wiki-heldout``/``news``, or a local file) is joined by blank lines, tokenized once and cut into
consecutive windows of ``seq_len`` tokens. When the tokenizer normally starts sequences with a BOS
token, each window starts with one (and holds ``seq_len - 1`` text tokens), so every text token is
predicted from a proper start; without one, the window's first token is context only (as in the
CorDA repository). PPL = exp(total NLL / predicted tokens).
"""

from __future__ import annotations

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


@dataclass
class Windows:
    source: str
    ids: torch.Tensor  # (n, seq_len)


@dataclass
class PerplexityResult:
    source: str
    perplexity: float
    nll: float  # mean negative log-likelihood per predicted token
    tokens: int  # predicted tokens
    windows: int
    seq_len: int

    def as_dict(self) -> dict:
        return dict(vars(self))


def evaluation_windows(
    source: str, tokenizer: PreTrainedTokenizerBase, seq_len: int, max_windows: int | None = None
) -> Windows:
    """Tokenize a source's evaluation text once and cut it into windows (the first ``max_windows``)."""
    require(seq_len >= 2, f"a perplexity window needs at least 2 tokens, got {seq_len}")
    corpus = resolve(source, split=EVAL_SPLITS.get(source))
    if corpus.kind != "text":
        raise SvdadaptError(f"{source} holds instruction examples, not text; perplexity needs a text source")
    text = "\n\n".join(corpus.documents)
    stream = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if adds_bos(tokenizer) else []
    body = seq_len - len(bos)
    count = len(stream) // body
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise SvdadaptError(f"{source} has {len(stream)} tokens, fewer than one window of {seq_len}; lower --seq-len")
    rows = [bos + stream[i * body : (i + 1) * body] for i in range(count)]
    return Windows(source, torch.tensor(rows, dtype=torch.long))


def _nll_sum(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed NLL of tokens 1.. of ``ids`` (b, L) under ``logits`` (b, L, vocab), and their count."""
    pred = logits[:, :-1]  # (b, L - 1, vocab): position t predicts token t + 1
    pred = pred if pred.dtype == torch.float64 else pred.float()
    target = ids[:, 1:].to(pred.device)
    nll = nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="sum")
    return float(nll), target.numel()


@torch.no_grad()
def perplexity(model: nn.Module, windows: Windows, batch_size: int = 1, progress: bool = True) -> PerplexityResult:
    """PPL of ``model`` over prepared windows (float64 accumulation of the NLL)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, counted = 0.0, 0
    n, seq_len = windows.ids.shape
    try:
        for start in tqdm(range(0, n, batch_size), desc=f"perplexity {windows.source}", disable=not progress):
            ids = windows.ids[start : start + batch_size].to(device)
            with backend.on(device).forward_products():
                logits = model(input_ids=ids, use_cache=False).logits  # (b, L, vocab)
            nll, count = _nll_sum(logits, ids)
            total += nll
            counted += count
    finally:
        model.train(was_training)
    mean = total / counted
    return PerplexityResult(windows.source, math.exp(mean), mean, counted, n, seq_len)


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
    sums = [0.0, 0]
    was_training = model.training
    model.eval()

    def add(batch, outputs) -> None:
        nll, count = _nll_sum(outputs.logits, batch["input_ids"])
        sums[0] += nll
        sums[1] += count

    try:
        with BlockStream(model, batches, placement=placement, hidden_dir=hidden_dir) as stream:
            blocks = len(stream.stack)
            for index in tqdm(range(blocks), desc=f"perplexity {windows.source}", unit="block", disable=not progress):
                stream.advance(index, change=(lambda block, i=index: change(i, block)) if change else None)
            stream.outputs(add)
    finally:
        model.train(was_training)
    mean = sums[0] / sums[1]
    return PerplexityResult(windows.source, math.exp(mean), mean, sums[1], n, seq_len)
