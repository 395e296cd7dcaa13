"""Shared fixtures: tiny model directories, batches with padding, and the real embedded models."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """{kind: directory} of tiny llama, bert and gpt2 models saved with their tokenizer."""
    from svdadapt.assets import TINY_KINDS, save_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {kind: save_tiny_model(kind, root / kind) for kind in TINY_KINDS}


def padded_batches(vocab: int = 512, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Three batches of random tokens with right padding of varied lengths."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [[12, 7, 12], [5, 12], [9]]
    batches = []
    for group in lengths:
        longest = max(group)
        ids = torch.randint(3, vocab, (len(group), longest), generator=gen)
        mask = torch.zeros(len(group), longest, dtype=torch.long)
        for row, n in enumerate(group):
            mask[row, :n] = 1
            ids[row, n:] = 0  # pad id
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    """20k characters of the bundled news text as a .txt calibration source."""
    from svdadapt.assets import news_text

    path = tmp_path_factory.mktemp("text") / "news.txt"
    path.write_text(news_text()[:20000])
    return path


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real embedded SmolLM2-135M-Instruct (converted once into $SVDADAPT_HOME)."""
    from svdadapt.assets import default_model_dir

    return default_model_dir()
