"""benchmarks/retention.py's declared design: the target rule, the rate-grid widening, trajectory
matching, the paired two-level bootstrap and the spread evaluation windows (no training)."""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest

from ..helpers import REPO

SCRIPT = REPO / "benchmarks" / "retention.py"


@pytest.fixture(scope="module")
def retention():
    spec = importlib.util.spec_from_file_location("retention", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["retention"] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("retention", None)


def test_the_main_contrast_and_targets_are_declared_in_the_script(retention):
    main = retention.MAIN
    assert (main.task, main.a, main.b, main.text, main.fraction) == ("news-cloze", "corda-kpa", "lora", "wiki", 0.5)
    assert retention.FRACTIONS == (0.25, 0.5, 0.75)
    # controls are rows: KPA from the news covariance, MiLoRA (= KPA from the identity), slow and L2 LoRA
    assert retention.ROWS["kpa-news"].store == "news" and retention.ROWS["kpa-news"].method == "corda-kpa"
    assert retention.ROWS["lora-slow"].steps_factor == 3 and max(retention.ROWS["lora-slow"].grid) < max(
        retention.ROWS["lora"].grid
    )
    assert retention.ROWS["lora-l2"].train == {"l2_init": 1.0}
    third = retention.ROWS["lora-third"]  # a fixed low rate: a third of LoRA's chosen 1.5e-3, 3x the steps
    assert third.fixed and third.grid == (5e-4,) and third.steps_factor == 3
    # issue 22's quantized variants: the same methods on an nf4 base, each its own build
    for row, method in (("lora-nf4", "lora"), ("pissa-nf4", "pissa"), ("corda-kpa-nf4", "corda-kpa")):
        assert retention.ROWS[row].method == method and retention.ROWS[row].build == {"quantize": "nf4"}
    assert retention.build_key("lora-nf4", "news-cloze", 0, True) != retention.build_key("lora", "news-cloze", 0, True)


def test_targets_are_fractions_of_the_way_from_the_original_to_the_reference(retention):
    # by hand: original 3.0, reference 1.0 -> 2.5, 2.0, 1.5
    assert retention.targets(3.0, 1.0) == {0.25: 2.5, 0.5: 2.0, 0.75: 1.5}
    assert retention.targets(3.0, 2.0, (0.5,)) == {0.5: 2.5}
    assert retention.targets(3.0, 3.0) == {} and retention.targets(3.0, 3.5) == {}  # nothing learned: no target


def test_summary_reads_the_reference_off_the_pilot_or_takes_the_declared_one(retention):
    state = synthetic_state(retention)
    summary = retention.summarize(state, {})
    # the pilot's best test loss (seed 0, any rate, any checkpoint) is 1.0 -> targets 2.5, 2.0, 1.5
    assert summary["news-cloze"]["reference"] == 1.0
    assert summary["news-cloze"]["targets"] == {"0.25": 2.5, "0.5": 2.0, "0.75": 1.5}
    fixed = retention.summarize(state, {"news-cloze": 2.0})["news-cloze"]
    assert fixed["targets"]["0.5"] == 2.5


def test_rows_beside_the_main_pair_never_move_its_targets(retention):
    state = synthetic_state(retention)
    before = retention.summarize(state, {})
    further = {"val_loss": 0.5, "test_loss": 0.5, "accuracy": 1.0, "wiki": [1.0] * 3, "news": [2.0] * 2}
    control = {"task": "news-cloze", "row": "lora-slow", "seed": 0, "lr": 1e-4, "checkpoints": [further]}
    state["points"]["news-cloze/lora-slow/s0/lr0.0001"] = control  # a control that learns further
    after = retention.summarize(state, {})
    assert after["news-cloze"]["targets"] == before["news-cloze"]["targets"] and after["main"] == before["main"]
    alone = {"settings": state["settings"], "original": state["original"], "chosen": {}, "inits": {},
             "points": {"news-cloze/lora-slow/s0/lr0.0001": control}}  # fmt: skip
    assert retention.summarize(alone, {})["news-cloze"]["reference"] == 0.5  # no pair here: every row's pilot


def test_widening_moves_the_grid_until_the_best_rate_is_inside(retention):
    widen = retention.widen
    assert widen({1e-4: 2.0, 3e-4: 1.5, 1e-3: 1.8}, 0, 2) == (None, "interior")
    nxt, status = widen({1e-4: 1.2, 3e-4: 1.5, 1e-3: 1.8}, 0, 2)  # best at the low edge: one more below
    assert nxt == pytest.approx(1e-4 / 3) and status == "edge (low)"
    nxt, status = widen({1e-4: 2.0, 3e-4: 1.5, 1e-3: 1.2}, 1, 2)
    assert nxt == pytest.approx(3e-3) and status == "edge (high)"
    assert widen({1e-4: 2.0, 3e-4: 1.5, 1e-3: 1.2}, 2, 2) == (None, "edge (high)")  # widened enough: say so
    # a diverged rate (non-finite loss) counts as worst: the best is then interior
    assert widen({1e-4: 2.0, 3e-4: 1.5, 1e-3: math.nan}, 0, 2) == (None, "interior")
    assert widen({1e-3: 1.0}, 0, 0) == (None, "one rate")
    assert retention.chosen_rate({1e-4: 1.5, 3e-4: 1.5, 1e-3: float("inf")}) == 1e-4  # ties: the lower


def test_crossing_follows_the_trajectory_and_never_extrapolates(retention):
    path = [(2.0, "init"), (1.0, "ckpt1"), (0.5, "ckpt2")]
    assert retention.crossing(path, 1.5) == [(pytest.approx(0.5), "init"), (pytest.approx(0.5), "ckpt1")]
    weights = retention.crossing(path, 0.75)
    assert [v for _, v in weights] == ["ckpt1", "ckpt2"] and weights[1][0] == pytest.approx(0.5)
    assert retention.crossing(path, 0.4) is None
    values = {"init": 0.0, "ckpt1": 4.0, "ckpt2": 10.0}
    assert retention.matched(retention.crossing(path, 0.75), values.get) == pytest.approx(7.0)
    # a path that comes back up is read where it first crosses
    assert retention.crossing([(2.0, "a"), (1.0, "b"), (1.8, "c")], 1.0) == [(0.0, "a"), (1.0, "b")]


def test_bootstrap_point_estimate_is_the_hand_computed_paired_difference(retention):
    # 2 documents x 2 windows; per window NLL changes; a = b + log(1.1) in every window -> +10 points exactly
    documents = [0, 0, 1, 1]
    b = {0: [(1.0, np.array([0.0, 0.2, 0.1, 0.1]))], 1: [(1.0, np.array([0.05, 0.05, 0.05, 0.05]))]}
    a = {s: [(1.0, d + math.log(1.1))] for s, [(_, d)] in b.items()}
    out = retention.bootstrap_contrast(a, b, documents, draws=300)
    # by hand: seed 0: b's mean change 0.1 -> 100(e^0.1 - 1) = 10.517; a's 100(1.1 e^0.1 - 1) = 21.569
    hand = np.mean([100 * (1.1 * math.exp(m) - 1) - 100 * math.expm1(m) for m in (0.1, 0.05)])
    assert out["estimate"] == pytest.approx(hand, rel=1e-12)
    assert out["low"] <= hand <= out["high"] and (out["seeds"], out["documents"], out["draws"]) == (2, 2, 300)


def test_bootstrap_is_paired_and_covers_the_true_difference(retention):
    """Seeds share a large effect in both rows (paired: it cancels); documents differ a lot (the
    document level widens the interval); the interval holds the true difference."""
    rng = np.random.default_rng(1)
    documents = [d for d in range(20) for _ in range(3)]
    doc_effect = np.repeat(rng.normal(0.0, 0.05, 20), 3)  # (60,) per window, shared by a and b
    true_shift = 0.01  # a's NLL change is b's + 0.01 nats in every window
    a, b = {}, {}
    for seed in range(6):
        seed_effect = rng.normal(0.0, 0.2)  # large, shared by a and b of the same seed
        base = 0.1 + seed_effect + doc_effect + rng.normal(0.0, 0.002, 60)
        b[seed] = [(1.0, base)]
        a[seed] = [(1.0, base + true_shift)]
    out = retention.bootstrap_contrast(a, b, documents, draws=500)
    truth = np.mean([100 * (math.exp(np.mean(b[s][0][1]) + true_shift) - math.exp(np.mean(b[s][0][1]))) for s in b])
    assert out["low"] <= truth <= out["high"]
    assert out["high"] - out["low"] < 1.0  # paired: the seed effect (±20 points of PPL) cancels
    # paired wrongly (a's seed s against b's seed s + 1), the seed effect stays: an interval of tens of points
    shuffled = retention.bootstrap_contrast({s: a[(s + 1) % 6] for s in a}, b, documents, draws=500)
    assert shuffled["high"] - shuffled["low"] > 10 * (out["high"] - out["low"])
    # only seeds both rows matched are compared
    assert retention.bootstrap_contrast({0: a[0]}, {1: b[1]}, documents)["estimate"] is None


def test_bootstrap_interpolates_between_checkpoints(retention):
    documents = [0, 1]
    zero, up = np.zeros(2), np.full(2, math.log(1.2))  # 0% and +20% perplexity
    a = {0: [(0.5, zero), (0.5, up)]}  # halfway between two checkpoints: +10 points
    b = {0: [(1.0, zero)]}
    assert retention.bootstrap_contrast(a, b, documents, draws=20)["estimate"] == pytest.approx(10.0)


def synthetic_state(retention) -> dict:
    """Two rows, two seeds, one rate each; wiki windows in 2 documents; test loss falls 3 -> 1."""
    original = {"wiki": [1.0, 1.0, 1.0], "news": [2.0, 2.0], "documents": {"wiki": [0, 0, 1], "news": [0, 1]},
                "task": {"news-cloze": {"val_loss": 3.0, "test_loss": 3.0, "accuracy": 0.25}}}  # fmt: skip

    def checkpoint(loss: float, wiki_up: float) -> dict:
        return {"val_loss": loss, "test_loss": loss, "accuracy": 0.5, "wiki": [1.0 + wiki_up] * 3, "news": [2.0, 2.0]}

    points, chosen = {}, {"news-cloze": {}}
    for row, slope in (("corda-kpa", 0.01), ("lora", 0.02)):
        chosen["news-cloze"][row] = {"lr": 1e-3, "status": "interior", "losses": {"0.001": 1.0}}
        for seed in (0, 1):
            points[f"news-cloze/{row}/s{seed}/lr0.001"] = {
                "task": "news-cloze", "row": row, "seed": seed, "lr": 1e-3,
                "checkpoints": [checkpoint(2.0, slope), checkpoint(1.0, 2 * slope)],
            }  # fmt: skip
    return {"settings": {"bootstrap": 100}, "original": original, "points": points, "chosen": chosen, "inits": {}}


def test_summary_matches_each_seed_on_the_trajectory_and_runs_the_main_contrast(retention):
    summary = retention.summarize(synthetic_state(retention), {})
    at_half = summary["news-cloze"]["rows"]["lora"]["at"]["0.5"]  # target 2.0 = checkpoint 1: +0.02 nats
    assert at_half["wiki"][0] == pytest.approx(100 * math.expm1(0.02)) and at_half["matched_seeds"] == 2
    quarter = summary["news-cloze"]["rows"]["corda-kpa"]["at"]["0.25"]  # target 2.5: halfway init -> ckpt 1
    assert quarter["wiki"][0] == pytest.approx(50 * math.expm1(0.01)) and quarter["accuracy"][0] == pytest.approx(0.375)
    main = summary["main"]
    assert main["estimate"] == pytest.approx(100 * (math.expm1(0.01) - math.expm1(0.02)))
    assert main["low"] <= main["estimate"] <= main["high"] and main["seeds"] == 2
    assert "only 2 seeds" in main["verdict"]
    assert "MAIN (pre-declared)" in retention.table(summary) and "| lora |" in retention.table(summary)


def test_build_keys_share_builds_between_rows_of_one_method_and_store(retention):
    assert retention.build_key("lora-l2", "news-cloze", 3, True) == retention.build_key("lora", "polarity", 3, True)
    assert retention.build_key("kpa-news", "polarity", 0, False) == "corda-kpa~news"
    assert retention.build_key("corda-ipa", "polarity", 0, False) == "corda-ipa@polarity"
    assert retention.build_key("corda-kpa", "polarity", 0, False) == "corda-kpa"


def test_study_windows_spread_over_every_heldout_document():
    """The study's forgetting texts: one window in each of the 24 held-out articles, and windows in
    24 different held-out news stories, none of them in news-cloze's training part."""
    from svdadapt.assets import news_text, tiny_tokenizer, wiki_articles
    from svdadapt.data import resolve
    from svdadapt.data.cloze import news_cloze_rows, news_documents
    from svdadapt.evaluate.perplexity import evaluation_windows

    tokenizer = tiny_tokenizer()
    articles = sum(a.heldout for a in wiki_articles())
    wiki = evaluation_windows("wiki-heldout", tokenizer, 128, articles, "spread")
    assert sorted(wiki.documents) == list(range(articles)) and wiki.choice == "spread"
    first = evaluation_windows("wiki-heldout", tokenizer, 128, articles, "first")
    assert len(set(first.documents)) < articles / 4  # what the earlier study measured: one or two articles
    news = evaluation_windows("news-heldout", tokenizer, 128, 24, "spread")
    assert len(set(news.documents)) == 24
    held = resolve("news-heldout").documents
    assert set(held) == set(news_documents(heldout=True)) and len(held) + len(news_documents(False)) == len(
        news_text().split("\n\n")
    )
    trained_sentences = " ".join(r["instruction"] for r in news_cloze_rows(heldout=False))
    assert not any(d[:60] in trained_sentences for d in held)


def test_quick_mode_runs_every_row_once_and_every_task(retention):
    plan = retention.quick_plan()
    assert set(plan) == set(retention.TASKS) and plan[retention.MAIN.task] == list(retention.ROWS)
    main = retention.MAIN
    assert all(rows == [main.a, main.b] for task, rows in plan.items() if task != main.task)


def test_a_path_starts_at_the_original_only_for_rows_whose_init_is_the_original(retention):
    # a truncated (KaSA) or 4-bit base is measured at init: its path does not start at the original
    starts = {row: retention.starts_as_original(row) for row in retention.ROWS}
    assert starts["lora"] and starts["corda-kpa"] and starts["lora-l2"] and starts["kpa-news"]
    assert not any(starts[row] for row in ("kasa", "kasa-context", "lora-nf4", "pissa-nf4", "corda-kpa-nf4"))


def test_controls_are_contrasted_with_each_of_the_main_pair_as_exploratory(retention, tmp_path):
    state = synthetic_state(retention)
    state["chosen"]["news-cloze"]["kpa-news"] = {"lr": 1e-3, "status": "interior", "losses": {"0.001": 1.0}}
    for seed in (0, 1):  # a control that moves wiki NLL as KPA does
        kpa = state["points"][f"news-cloze/corda-kpa/s{seed}/lr0.001"]
        state["points"][f"news-cloze/kpa-news/s{seed}/lr0.001"] = {**kpa, "row": "kpa-news"}
    summary = retention.summarize(state, {})
    found = {(c["a"], c["b"], c["text"]): c for c in summary["exploratory"]}
    assert set(found) == {("kpa-news", b, t) for b in ("corda-kpa", "lora") for t in ("wiki", "news")}
    assert found["kpa-news", "corda-kpa", "wiki"]["estimate"] == pytest.approx(0.0, abs=1e-12)
    assert found["kpa-news", "lora", "wiki"]["estimate"] == pytest.approx(summary["main"]["estimate"])
    assert "Exploratory" in retention.table(summary) and summary["main"]["a"] == "corda-kpa"  # main unchanged
    polarity = {**state["original"]["task"]["news-cloze"]}
    state["original"]["task"]["polarity"] = polarity  # the main pair on a second task: contrasted there too
    state["chosen"]["polarity"] = {row: dict(c) for row, c in state["chosen"]["news-cloze"].items()}
    for key, point in list(state["points"].items()):
        if point["row"] in ("corda-kpa", "lora"):
            state["points"]["polarity" + key.removeprefix("news-cloze")] = {**point, "task": "polarity"}
    summary = retention.summarize(state, {})
    on_polarity = [c for c in summary["exploratory"] if c["task"] == "polarity"]
    assert [(c["a"], c["b"]) for c in on_polarity] == [("corda-kpa", "lora")] * 2
    assert on_polarity[0]["estimate"] == pytest.approx(summary["main"]["estimate"])
    pytest.importorskip("matplotlib")
    assert retention.plot({**state, "summary": summary}, tmp_path / "study.png").stat().st_size > 0
