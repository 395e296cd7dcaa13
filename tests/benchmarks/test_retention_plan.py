"""benchmarks/retention.py's planning and matching logic (pure functions; no model, no training)."""

from __future__ import annotations

import importlib.util
import sys

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


def test_plan_covers_every_combination_and_shares_deterministic_builds(retention):
    settings = retention.Settings()
    random = {m: retention.random_init(m) for m in settings.methods}
    assert {m for m, r in random.items() if r} == {"lora", "kasa", "kasa-context"}
    jobs, builds = retention.plan(settings, random)
    assert len(jobs) == 9 * 3 * 3 * 2 == len({j.key for j in jobs})
    assert [j.seed for j in jobs[:54]] == [0] * 54  # seeds outermost: a partial run holds whole seeds
    # 6 deterministic rows once (corda-ipa once per task), 3 random rows once per seed
    assert len(builds) == 5 + 2 + 3 * 3
    assert builds["corda-ipa@news-cloze"] == ("corda-ipa", "news-cloze", 0)
    assert builds["kasa-context#s2"] == ("kasa-context", "", 2)
    quick_jobs, _ = retention.plan(retention.QUICK, random)
    assert len(quick_jobs) == 9 * 2 and {j.method for j in quick_jobs} == set(retention.METHODS)


def point(loss, ppl):
    return (loss, {"ppl_change": ppl, "task_loss": loss})


def test_crossing_interpolates_along_the_path_and_never_extrapolates(retention):
    path = [point(2.0, 0.0), point(1.0, 1.0), point(0.5, 3.0)]
    assert retention.crossing(path, 1.5, "ppl_change") == pytest.approx(0.5)
    assert retention.crossing(path, 0.75, "ppl_change") == pytest.approx(2.0)
    assert retention.crossing(path, 0.4, "ppl_change") is None
    # a path that overshoots (too large a learning rate) is read where it first crosses
    assert retention.crossing([point(2.0, 0.0), point(1.0, 2.0), point(1.8, 9.0)], 1.5, "ppl_change") == 1.0


def test_target_is_the_worst_learners_best_loss(retention):
    paths = {
        ("a", 0): [point(2.0, 0), point(1.0, 1)],
        ("b", 0): [point(2.0, 0), point(1.4, 1), point(1.2, 2)],
        ("broken", 0): [point(9.0, 50), point(5.0, 40)],  # never gets below the original: not a learner
    }
    assert retention.common_target(paths, original_loss=2.0) == 1.2
    assert retention.common_target({("x", 0): [point(2.0, 0)]}, original_loss=2.0) is None


def test_summary_matches_each_seed_and_reports_mean_and_spread(retention):
    original = {"task_loss": {"t": 2.0}}
    points = []
    for seed, slope in ((0, 1.0), (1, 3.0)):
        for lr, loss in ((1e-4, 1.5), (1e-3, 1.0)):
            change = slope * (2.0 - loss)
            points.append({"task": "t", "method": "m", "seed": seed, "lr": lr, "task_loss": loss,
                           "ppl_change": change, "seen_change": -change, "unseen_change": 0.0})  # fmt: skip
    summary = retention.summarize(points, {}, original, {})["t"]
    assert summary["target_task_loss"] == 1.0
    mean, sd, n = summary["methods"]["m"]["ppl_change"]
    assert (mean, n) == (pytest.approx(2.0), 2) and sd == pytest.approx(1.4142, abs=1e-3)
    fixed = retention.summarize(points, {}, original, {"t": 1.5})["t"]["methods"]["m"]
    assert fixed["ppl_change"][0] == pytest.approx(1.0) and fixed["seen_change"][0] == pytest.approx(-1.0)
    assert fixed["seen_minus_unseen"][0] == pytest.approx(-1.0) and fixed["matched_seeds"] == 2
    # KaSA-like: a method whose init is not the original starts its path from its measured init
    inits = {"m": {"t": {"task_loss": 3.0, "ppl_change": 10.0, "seen_change": 0.0, "unseen_change": 0.0}}}
    shifted = retention.summarize(points, inits, original, {"t": 2.0})["t"]["methods"]["m"]
    assert shifted["ppl_change"][0] == pytest.approx(4.0)  # 10 + 2/3·(0.5 − 10) and 10 + 2/3·(1.5 − 10)
    assert "| m |" in retention.table(retention.summarize(points, {}, original, {}), {"m": 123})


def test_combine_joins_runs_of_different_tasks_and_refuses_other_settings(retention, tmp_path):
    """--combine: two runs of the same settings on different tasks give the study a single run of
    both would (each task is summarised on its own points); other settings or a repeated task exit."""
    import json

    def run(directory, task, slope, ppl=20.0, steps=10, lrs=(1e-4, 1e-3)):
        points = {}
        for lr, loss in zip(lrs, (1.5, 1.0)):
            key = f"{task}/lora/s0/lr{lr:g}"
            points[key] = {"task": task, "method": "lora", "seed": 0, "lr": lr, "task_loss": loss,
                           "ppl_change": slope * (2.0 - loss), "seen_change": 0.0, "unseen_change": 0.0}  # fmt: skip
        state = {
            "settings": {"methods": ["lora"], "tasks": [task], "lrs": [1e-4, 1e-3], "seeds": [0], "steps": steps},
            "points": points, "trainable": {"lora": 1},
            "original": {"task_loss": {task: 2.0}, "ppl": ppl, "cloze_seen": -5.0, "cloze_unseen": -5.0},
            "inits": {"k": {task: {"task_loss": 3.0}}}, "seconds": 60.0,
        }  # fmt: skip
        (tmp_path / directory).mkdir()
        (tmp_path / directory / "results.json").write_text(json.dumps(state))
        return tmp_path / directory

    a, b = run("a", "t1", 1.0), run("b", "t2", 3.0)
    state = retention.combine([a, b], tmp_path / "both", {})
    assert state["settings"]["tasks"] == ["t1", "t2"] and len(state["points"]) == 4 and state["seconds"] == 120.0
    assert state["inits"] == {"k": {"t1": {"task_loss": 3.0}, "t2": {"task_loss": 3.0}}}
    for task, slope, directory in (("t1", 1.0, a), ("t2", 3.0, b)):
        points = json.loads((directory / "results.json").read_text())["points"].values()
        alone = retention.summarize(list(points), {}, {"task_loss": {task: 2.0}}, {})[task]
        assert state["summary"][task] == alone and alone["methods"]["lora"]["ppl_change"][0] == pytest.approx(slope)
    written = json.loads((tmp_path / "both" / "results.json").read_text())
    assert written["summary"] == json.loads(json.dumps(state["summary"]))
    for other, message in ((run("c", "t3", 1.0, steps=20), "other settings"), (run("d", "t1", 1.0), "more than one"),
                           (run("e", "t4", 1.0, ppl=21.0), "not the same study"),
                           (run("f", "t5", 1.0, lrs=(1e-4,)), "unfinished: 1 of 2 trainings measured"),
                           (tmp_path / "nowhere", "holds no results.json")):  # fmt: skip
        with pytest.raises(SystemExit, match=message):
            retention.combine([a, other], tmp_path / "x", {})


def test_target_losses_are_checked(retention, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    assert retention.parse_targets(parser, ["polarity=0.15", "news-cloze=2.65"]) == {"polarity": 0.15,
                                                                                     "news-cloze": 2.65}  # fmt: skip
    for bad in ("polarty=0.2", "polarity", "polarity=abc", "polarity=0", "news-cloze=-1", "polarity=inf"):
        with pytest.raises(SystemExit):
            retention.parse_targets(parser, [bad])
        assert "give TASK=LOSS" in capsys.readouterr().err, bad
