"""Tokenized training and evaluation sets: classification pairs and instruction examples, with the
collators that pad them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ..data.samples import Sample
from ..data.tasks import ClassificationTask

IGNORE = -100  # label id the loss skips


def classification_features(
    task: ClassificationTask, rows: Sequence[dict], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[dict]:
    """One dict per row: the tokenized text (pair) and its label."""
    texts = [[r[c] for r in rows] for c in task.columns]
    encoded = tokenizer(*texts, truncation=True, max_length=max_length)
    label_dtype = torch.float32 if task.regression else torch.long
    return [
        {**{k: v[i] for k, v in encoded.items()}, "labels": torch.tensor(rows[i]["label"], dtype=label_dtype)}
        for i in range(len(rows))
    ]


def sft_features(samples: Sequence[Sample], packing: bool, max_length: int) -> list[dict]:
    """Causal-LM features with the loss on response tokens only (every assistant turn of a
    conversation; all tokens for plain text).

    ``packing`` concatenates examples into rows of ``max_length`` tokens (fewer pad tokens; the
    examples then attend to their predecessors in the row, as packed SFT usually does)."""
    items = []
    for s in samples:
        labels = [IGNORE] * len(s.input_ids)
        for start, end in s.responses():
            labels[start:end] = s.input_ids[start:end]
        items.append((list(s.input_ids), labels))
    if packing:
        packed, ids, labels = [], [], []
        for item_ids, item_labels in items:
            if ids and len(ids) + len(item_ids) > max_length:
                packed.append((ids, labels))
                ids, labels = [], []
            ids, labels = ids + item_ids[:max_length], labels + item_labels[:max_length]
        if ids:
            packed.append((ids, labels))
        items = packed
    return [{"input_ids": ids, "labels": labels} for ids, labels in items if any(x != IGNORE for x in labels)]


@dataclass
class CausalCollator:
    """Right-pads input_ids with ``pad_id`` and labels with -100, and builds the attention mask."""

    pad_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), longest), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"])
            labels[row, :n] = torch.tensor(f["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
