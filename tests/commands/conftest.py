"""Fixtures of the commands' tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def short_text_file(tmp_path_factory):
    """8k characters of the bundled news text as a .txt calibration source (the root's text_file has 20k)."""
    from svdadapt.assets import news_text

    path = tmp_path_factory.mktemp("data") / "news.txt"
    path.write_text(news_text()[:8000])
    return path
