"""Samples → padded batches of ``input_ids`` and ``attention_mask`` (right padding)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from .samples import Sample


def pad_batch(samples: Sequence[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch: (batch, longest) ``input_ids`` padded with ``pad_id`` and its 0/1 mask."""
    longest = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, sample in enumerate(samples):
        ids[row, : len(sample.input_ids)] = torch.tensor(sample.input_ids, dtype=torch.long)
        mask[row, : len(sample.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def make_batches(samples: Sequence[Sample], batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive groups of ``batch_size`` samples, each padded to its own longest sample."""
    return [pad_batch(samples[i : i + batch_size], pad_id) for i in range(0, len(samples), batch_size)]


def samples_digest(batches: Sequence[dict[str, torch.Tensor]]) -> str:
    """A digest of the batches' tokens and masks: what identifies the samples beyond the options
    that chose them (a data file edited, another tokenizer)."""
    digest = hashlib.sha256()
    for batch in batches:
        for name in ("input_ids", "attention_mask"):
            digest.update(batch[name].to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
