"""Fixtures every folder uses: tiny model directories, a news text file, the real embedded SmolLM2.
(Plain helpers are in helpers.py; a folder's own fixtures in its conftest.py; see README.md.)"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """{kind: directory} of tiny llama, bert and gpt2 models saved with their tokenizer."""
    from svdadapt.assets import TINY_KINDS, save_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {kind: save_tiny_model(kind, root / kind) for kind in TINY_KINDS}


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
