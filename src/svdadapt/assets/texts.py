"""Real English text that ships inside gensim's test data, usable with no network.

- ``wiki`` / ``wiki-heldout``: a shortened English Wikipedia dump (~106 articles), markup stripped,
  split by article into a calibration part and a held-out part (an article is held out when the
  sha1 of its title is 0 mod 5 — deterministic, independent of order).
- ``news``: the Lee news corpus background text.
- ``polarity``: 200 labelled movie-review sentences (label ``positive``/``negative``).
"""

from __future__ import annotations

import bz2
import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..atomic import write_json
from ..errors import SvdadaptError
from .home import package_dir, svdadapt_home

GENSIM_HINT = "run `pip install gensim` (make quickstart does this)"
WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
HELDOUT_MODULUS = 5


@dataclass(frozen=True)
class Article:
    title: str
    text: str

    @property
    def heldout(self) -> bool:
        return int(hashlib.sha1(self.title.encode()).hexdigest(), 16) % HELDOUT_MODULUS == 0


def gensim_test_data() -> Path:
    return package_dir("gensim", GENSIM_HINT) / "test" / "test_data"


def _clean_wiki(text: str) -> str:
    text = re.sub(r"'{2,}", "", text)  # bold/italic quote runs left by filter_wiki
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _parse_wiki() -> list[Article]:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    articles = []
    with bz2.open(gensim_test_data() / WIKI_DUMP) as f:
        for title, raw, _ in extract_pages(f, filter_namespaces=("0",)):
            text = _clean_wiki(filter_wiki(raw))
            if text and not text.lower().startswith("#redirect"):
                articles.append(Article(title, text))
    return articles


@lru_cache(maxsize=1)
def wiki_articles() -> tuple[Article, ...]:
    """All articles of the bundled dump, parsed once and cached as JSON under $SVDADAPT_HOME."""
    cache = svdadapt_home() / "texts" / "enwiki-shortened.json"
    if cache.is_file():
        try:
            return tuple(Article(**a) for a in json.loads(cache.read_text(encoding="utf-8")))
        except (ValueError, TypeError):  # a damaged cache: parse the dump again
            pass
    if not (gensim_test_data() / WIKI_DUMP).is_file():
        raise SvdadaptError(f"gensim's test data lacks {WIKI_DUMP}; {GENSIM_HINT}")
    articles = _parse_wiki()
    write_json(cache, [vars(a) for a in articles])  # type: ignore[arg-type]
    return tuple(articles)


def wiki_text(heldout: bool = False) -> str:
    """The calibration (or held-out) articles joined by blank lines."""
    return "\n\n".join(a.text for a in wiki_articles() if a.heldout == heldout)


def news_text() -> str:
    path = gensim_test_data() / "lee_background.cor"
    if not path.is_file():
        raise SvdadaptError(f"gensim's test data lacks lee_background.cor; {GENSIM_HINT}")
    return "\n\n".join(line.strip() for line in path.read_text(encoding="latin-1").splitlines() if line.strip())


def polarity_split(heldout: bool) -> tuple[tuple[str, str], ...]:
    """The 160 training (or 40 held-out: every fifth, balanced) polarity examples, one split for
    every task that uses them — classification, instruction tuning, calibration, evaluation."""
    return tuple(e for i, e in enumerate(polarity_examples()) if (i % 5 == 0) == heldout)


@lru_cache(maxsize=1)
def polarity_examples() -> tuple[tuple[str, str], ...]:
    """(sentence, "positive"|"negative") pairs in file order."""
    path = gensim_test_data() / "pang_lee_polarity.cor"
    if not path.is_file():
        raise SvdadaptError(f"gensim's test data lacks pang_lee_polarity.cor; {GENSIM_HINT}")
    examples = []
    for line in path.read_text(encoding="latin-1").splitlines():
        label, _, sentence = line.partition(" ")
        if label in ("__label__pos", "__label__neg") and sentence.strip():
            examples.append((sentence.strip(), "positive" if label == "__label__pos" else "negative"))
    return tuple(examples)
