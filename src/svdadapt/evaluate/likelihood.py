"""Instruction tasks scored by label likelihood, not by generation.

Each example is a prompt with a few candidate responses (for ``polarity-instruct``: "positive" and
"negative"). Every candidate is rendered with the same template as training (prompt part, then
response part, tokenized separately and joined), and scored by the model's summed log-probability
of the response tokens given the prompt. The prediction is the candidate with the highest score;
accuracy is the fraction of examples whose prediction is the labelled answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .. import backend
from ..data.batching import pad_batch
from ..data.records import Example
from ..data.samples import Sample
from ..data.sources import resolve
from ..data.templates import get_template
from ..errors import SvdadaptError
from ..runner import positions_to_keep

POLARITY_LABELS = ("positive", "negative")


@dataclass(frozen=True)
class ChoiceExample:
    prompt: str
    choices: tuple[str, ...]
    answer: int  # index into choices


def polarity_choices(limit: int | None = None) -> list[ChoiceExample]:
    """The held-out polarity examples (source ``polarity-heldout``) as two-way choices."""
    corpus = resolve("polarity-heldout")
    count = len(corpus) if limit is None else min(limit, len(corpus))
    examples = corpus.examples(range(count))
    return [ChoiceExample(e.prompt, POLARITY_LABELS, POLARITY_LABELS.index(e.response)) for e in examples]


def choice_samples(
    examples: Sequence[ChoiceExample], tokenizer: PreTrainedTokenizerBase, template: str | None = None
) -> list[Sample]:
    """One sample per (example, choice), in that order; ``prompt_len`` marks the response."""
    tmpl = get_template(template, tokenizer)
    samples = []
    for example in examples:
        for choice in example.choices:
            prompt, response = tmpl.render(Example(example.prompt, choice), tokenizer)
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
            if not response_ids:
                raise SvdadaptError(f"the response {choice!r} renders to no tokens with template {tmpl.name}")
            samples.append(Sample(prompt_ids + response_ids, len(prompt_ids)))
    return samples


@dataclass
class ResponseScores:
    logprob: torch.Tensor  # (n,) float64: Σ log p over each sample's response tokens
    greedy: torch.Tensor  # (n,) bool: every response token is the model's argmax (greedy decoding's answer)
    first: torch.Tensor  # (n, len(rivals)) float64: log p of each rival token at the first response position


@torch.no_grad()
def response_scores(
    model: nn.Module,
    samples: Sequence[Sample],
    pad_id: int,
    batch_size: int = 8,
    progress: bool = False,
    rivals: Sequence[int] = (),
) -> ResponseScores:
    """One forward per batch: each sample's response log-likelihood, whether greedy decoding would
    produce its response, and the log-probabilities of ``rivals`` (token ids, e.g. the other labels'
    single tokens) where the response starts."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores, greedy, first = [], [], []
    try:
        for start in tqdm(range(0, len(samples), batch_size), desc="label likelihood", disable=not progress):
            group = samples[start : start + batch_size]
            batch = pad_batch(group, pad_id)
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)  # (b, L)
            position = torch.arange(1, ids.shape[1], device=device)  # position of each predicted token
            starts = torch.tensor([s.prompt_len for s in group], device=device)
            counted = (position[None, :] >= starts[:, None]) & mask[:, 1:].bool()  # (b, L-1) response tokens
            keep = positions_to_keep(model, counted)  # (k,): the head runs at these positions only
            extra = {} if keep is None else {"logits_to_keep": keep}
            with backend.on(device).forward_products():
                logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **extra).logits  # (b, k, V)
            if keep is None:
                keep = torch.arange(ids.shape[1] - 1, device=device)
                logits = logits[:, :-1]
            logits = logits if logits.dtype == torch.float64 else logits.float()
            full = torch.log_softmax(logits, dim=-1)  # (b, k, V)
            target = ids[:, keep + 1]  # (b, k)
            logp = full.gather(-1, target[..., None])[..., 0]  # (b, k)
            here = counted[:, keep]  # (b, k)
            scores.append((logp.double() * here).sum(dim=1).cpu())
            greedy.append(((full.argmax(dim=-1) == target) | ~here).all(dim=1).cpu())
            at = torch.searchsorted(keep, starts - 1).clamp(max=len(keep) - 1)  # (b,) the first response position
            rows = full[torch.arange(len(group), device=device), at]  # (b, V)
            first.append(rows[:, list(rivals)].double().cpu())
    finally:
        model.train(was_training)
    return ResponseScores(torch.cat(scores), torch.cat(greedy), torch.cat(first))


def response_logprobs(
    model: nn.Module, samples: Sequence[Sample], pad_id: int, batch_size: int = 8, progress: bool = False
) -> torch.Tensor:
    """(n,) float64: Σ log p(token | preceding tokens) over each sample's response tokens."""
    return response_scores(model, samples, pad_id, batch_size, progress).logprob


def choice_scores(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[ChoiceExample],
    template: str | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> torch.Tensor:
    """(n, choices) float64 response log-likelihood of every candidate of every example."""
    if not examples:
        raise SvdadaptError("no examples to evaluate")
    width = len(examples[0].choices)
    if any(len(e.choices) != width for e in examples):
        raise SvdadaptError("every example needs the same number of choices")
    samples = choice_samples(examples, tokenizer, template)
    return response_logprobs(model, samples, tokenizer.pad_token_id, batch_size, progress).view(-1, width)


def label_likelihood_accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[ChoiceExample],
    template: str | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> dict:
    """Accuracy by label likelihood, with the template used and the number of examples."""
    scores = choice_scores(model, tokenizer, examples, template, batch_size, progress)  # (n, choices)
    answers = torch.tensor([e.answer for e in examples])
    correct = scores.argmax(dim=1) == answers
    return {
        "accuracy": float(correct.double().mean()),
        "examples": len(examples),
        "scoring": "label likelihood",
        "template": get_template(template, tokenizer).name,
    }
