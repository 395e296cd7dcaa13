"""The bundled news-cloze task (fill-in-the-blank prompts from the news text) and cloze items."""

from __future__ import annotations

from svdadapt.data import resolve
from svdadapt.data.cloze import BLANK, cloze_item, longest_word_blank, sentences


def test_news_cloze_is_a_few_hundred_examples_split_by_story():
    train, heldout = resolve("news-cloze"), resolve("news-cloze-heldout")
    assert train.kind == heldout.kind == "examples"
    assert len(train) >= 400 and len(heldout) >= 100
    prompts = {r["instruction"] for r in train.rows}
    assert not prompts & {r["instruction"] for r in heldout.rows}
    for example in train.examples(range(len(train))):
        sentence = example.prompt.split("Sentence: ", 1)[1]
        assert sentence.count(BLANK) == 1 and example.response.isalpha() and len(example.response) >= 5
        assert 8 <= len(sentence.split()) <= 24
    assert resolve("news-cloze").rows == train.rows  # deterministic


def test_blank_is_the_longest_word_and_restores_the_sentence():
    sentence = "A new blaze near Goulburn, south-west of Sydney, has forced the closure of the Hume Highway."
    blank = longest_word_blank(sentence)
    assert blank.word == "Goulburn"
    assert blank.before + blank.word + blank.after == sentence
    assert longest_word_blank("Too short to use.") is None


def test_cloze_item_prefers_the_last_name():
    item = cloze_item("The river flows north through the town before it reaches Lake Victoria in the end.")
    assert item.word == "Victoria" and item.before.endswith("Lake")
    assert cloze_item("It is so.") is None
    assert sentences("One here. Two there!\n\nThree") == ["One here.", "Two there!", "Three"]
