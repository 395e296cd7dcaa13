"""Cloze items made from bundled text: the ``news-cloze`` instruction task and fact-probe sentences.

``news-cloze`` (and ``news-cloze-heldout``): fill-in-the-blank prompts built from the bundled Lee
news background text (300 short news documents), with no labels needed and no hub. Each document
is split into sentences; a sentence of 8–24 words gives an example whose blank is its longest word
of at least 5 letters (the first occurrence, never the sentence's first word), so the answer is a
content word — a name, a place, a noun, a verb — that the rest of the sentence makes guessable.
At most :data:`PER_DOCUMENT` examples per document (its first qualifying sentences). A document is
held out when the sha1 of its first 80 characters is 0 mod 5, so the held-out examples come from
news stories never trained on (deterministic, independent of order).

:func:`cloze_item` is the same idea for probing what a model knows: a sentence is cut before its
last content word (preferring a capitalised one — usually a name), giving a prefix and the true
completion, whose log-likelihood can be scored given the prefix (plain text, no template).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

NEWS_CLOZE_PROMPT = "Fill in the blank (____) with the missing word.\n\nSentence: {sentence}"
BLANK = "____"
PER_DOCUMENT = 2
MIN_WORDS, MAX_WORDS = 8, 24
HELDOUT_MODULUS = 5
_STOPWORD_TEXT = """
    a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having he
    her here hers herself him himself his how i if in into is it its itself just me more most my myself no nor
    not now of off on once only or other our ours out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up very was we were what
    when where which while who whom why will with would you your yours said says told today
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_WORD = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*")


def sentences(text: str) -> list[str]:
    """Sentences of ``text`` (split at ., ! or ? followed by a capital), whitespace normalised."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        out.extend(s.strip() for s in _SENTENCE_END.split(para) if s.strip())
    return out


@dataclass(frozen=True)
class Blank:
    """A sentence with one word taken out: ``before`` + ``word`` + ``after`` is the sentence."""

    before: str
    word: str
    after: str

    @property
    def masked(self) -> str:
        return f"{self.before}{BLANK}{self.after}"


def _words(sentence: str) -> list[re.Match]:
    return list(_WORD.finditer(sentence))


def longest_word_blank(sentence: str) -> Blank | None:
    """The sentence with its longest word of ≥ 5 letters blanked (None when it has no such word,
    or it is not 8–24 words long). The first word never counts (its capital gives it away)."""
    words = _words(sentence)
    if not MIN_WORDS <= len(sentence.split()) <= MAX_WORDS or len(words) < 2:
        return None
    candidates = [m for m in words[1:] if len(m.group()) >= 5 and m.group().isalpha()]
    candidates = [m for m in candidates if m.group().lower() not in STOPWORDS]
    if not candidates:
        return None
    best = max(candidates, key=lambda m: len(m.group()))  # the first of the longest
    return Blank(sentence[: best.start()], best.group(), sentence[best.end() :])


def cloze_item(sentence: str, min_prefix_words: int = 5) -> Blank | None:
    """``sentence`` cut before its last content word (≥ 4 letters, not a stopword), preferring the
    last capitalised one (not the sentence's first word): ``before`` is the prefix to condition on,
    ``word`` the completion to score. None when no such word has ``min_prefix_words`` words before it."""
    words = _words(sentence)
    usable = [
        (i, m)
        for i, m in enumerate(words)
        if i >= min_prefix_words and len(m.group()) >= 4 and m.group().isalpha() and m.group().lower() not in STOPWORDS
    ]
    if not usable:
        return None
    named = [(i, m) for i, m in usable if m.group()[0].isupper()]
    _, chosen = (named or usable)[-1]
    return Blank(sentence[: chosen.start()].rstrip(), chosen.group(), sentence[chosen.end() :])


def _document_heldout(document: str) -> bool:
    return int(hashlib.sha1(document[:80].encode()).hexdigest(), 16) % HELDOUT_MODULUS == 0


def news_documents(heldout: bool) -> list[str]:
    """The bundled news stories of one part: those ``news-cloze`` trains on, or those it holds out
    (the ``news-heldout`` text: out-of-domain text for forgetting, never in the task's training)."""
    from ..assets import news_text

    return [d for d in news_text().split("\n\n") if _document_heldout(d) == heldout]


@lru_cache(maxsize=1)
def news_cloze_examples() -> tuple[tuple[str, str, bool], ...]:
    """(masked sentence, answer, held out?) for every news-cloze example, in document order."""
    from ..assets import news_text

    examples = []
    for document in news_text().split("\n\n"):
        heldout = _document_heldout(document)
        taken = 0
        for sentence in sentences(document):
            blank = longest_word_blank(sentence)
            if blank is None:
                continue
            examples.append((blank.masked, blank.word, heldout))
            taken += 1
            if taken == PER_DOCUMENT:
                break
    return tuple(examples)


def news_cloze_rows(heldout: bool) -> list[dict]:
    """The training (or held-out) part as alpaca-style rows: instruction and output."""
    return [
        {"instruction": NEWS_CLOZE_PROMPT.format(sentence=masked), "output": word}
        for masked, word, held in news_cloze_examples()
        if held == heldout
    ]
