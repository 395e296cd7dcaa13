"""`svdadapt eval` as a user runs it: defaults, where results go, and every bad input as one line."""

import json
import shutil
import sys

import pytest

from svdadapt.assets import save_tiny_model
from svdadapt.cli import main

from ..helpers import bad, run


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr("svdadapt.hub.hub_reachable", lambda *a, **k: False)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_dirs):
    """A lora run whose base is the original model, in a copy of the tiny llama directory."""
    root = tmp_path_factory.mktemp("lora")
    shutil.copytree(tiny_dirs["llama"], root / "llama")
    args = ["build", "--model", root / "llama", "--method", "lora", "--rank", "4", "--out", root / "run"]
    args += ["--device", "cpu"]
    assert main([str(a) for a in args]) == 0
    return root / "run"


def test_run_defaults_to_wiki_heldout_perplexity_written_next_to_the_run(capsys, lora_run):
    code, out, err = run(capsys, "eval", lora_run, "--max-windows", "2", "--device", "cpu")
    assert code == 0, err
    results = json.loads((lora_run / "eval" / "results.json").read_text())
    assert list(results["perplexity"]) == ["wiki-heldout"] and results["tasks"] == {}
    assert results["perplexity"]["wiki-heldout"]["windows"] == 2
    assert results["target"]["kind"] == "run" and results["target"]["method"] == "lora"
    assert "wiki-heldout" in out and "(run: lora, built)" in out and "eval/results.json" in out


def test_model_results_only_with_out(capsys, tiny_dirs):
    code, out, _ = run(capsys, "eval", tiny_dirs["llama"], "--perplexity", "news", "--max-windows", "1")
    assert code == 0 and "not written" in out
    assert not (tiny_dirs["llama"] / "eval").exists()


def test_unknown_task(capsys, tiny_dirs, tmp_path):
    out = tmp_path / "r.json"
    assert "unknown task 'nope'" in bad(capsys, "eval", tiny_dirs["llama"], "--tasks", "nope", "--out", out)
    assert "unknown task 'glue:polarity'" in bad(capsys, "eval", tiny_dirs["llama"], "--tasks", "glue:polarity")
    assert not out.exists()


def test_unknown_and_unreachable_perplexity_sources(capsys, tiny_dirs, tmp_path, offline):
    out = tmp_path / "r.json"
    assert "unknown data source 'nosuch'" in bad(capsys, "eval", tiny_dirs["llama"], "--perplexity", "nosuch")
    msg = bad(capsys, "eval", tiny_dirs["llama"], "--perplexity", "wiki-heldout,wikitext2", "--out", out)
    assert "cannot reach the Hugging Face hub" in msg and "wikitext2" in msg
    assert not out.exists()


def test_run_of_another_model(capsys, lora_run):
    """A run holds its base (the original's files, linked): replacing the original leaves the run as it
    was; replacing the run's own base is found by its fingerprint."""
    save_tiny_model("llama", lora_run.parent / "llama", seed=1)  # the original model, replaced
    assert run(capsys, "eval", lora_run, "--perplexity", "news", "--max-windows", "1", "--device", "cpu")[0] == 0
    base = lora_run / "base" / "model.safetensors"
    kept = lora_run.parent / "kept.safetensors"
    shutil.move(base, kept)
    shutil.copy(lora_run.parent / "llama" / "model.safetensors", base)  # the run's own base, replaced
    try:
        msg = bad(capsys, "eval", lora_run, "--perplexity", "news", "--max-windows", "1")
    finally:
        shutil.move(kept, base)
        save_tiny_model("llama", lora_run.parent / "llama", seed=0)
    assert "is not the one this run was built on" in msg


def test_tasks_the_model_cannot_do(capsys, tiny_dirs):
    assert "needs a sequence-classification model" in bad(capsys, "eval", tiny_dirs["llama"], "--tasks", "glue:cola")
    msg = bad(capsys, "eval", tiny_dirs["bert"], "--tasks", "polarity-instruct")
    assert "needs a causal language model" in msg
    assert "no trained task on record" in bad(capsys, "eval", tiny_dirs["bert"])


def test_bad_numbers_targets_and_outs(capsys, tiny_dirs, tmp_path):
    llama = tiny_dirs["llama"]
    assert "limit of 256 positions" in bad(capsys, "eval", llama, "--perplexity", "news", "--seq-len", "1000")
    assert "--max-windows must be positive" in bad(capsys, "eval", llama, "--max-windows", "0")
    assert "is a directory" in bad(capsys, "eval", llama, "--out", tmp_path)
    (tmp_path / "empty").mkdir()
    assert "neither an svdadapt run" in bad(capsys, "eval", tmp_path / "empty")


def test_lm_eval_offline_is_one_line(capsys, tiny_dirs, tmp_path, offline, monkeypatch):
    monkeypatch.setattr("svdadapt.evaluate.harness.lm_eval_installed", lambda: True)  # installed, no hub
    out = tmp_path / "r.json"
    msg = bad(capsys, "eval", tiny_dirs["llama"], "--tasks", "lm-eval:gsm8k", "--out", out)
    assert "cannot reach the Hugging Face hub" in msg and "lm-eval task(s) gsm8k" in msg
    assert not out.exists()


def test_lm_eval_not_installed(capsys, tiny_dirs, monkeypatch):
    monkeypatch.setattr("svdadapt.hub.hub_reachable", lambda *a, **k: True)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    assert "pip install svdadapt[eval]" in bad(capsys, "eval", tiny_dirs["llama"], "--tasks", "lm-eval:nq_open")


LOCAL_TASK = """task: tiny_polarity
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Review: {{{{text}}}}\\nSentiment:"
doc_to_choice: ["positive", "negative"]
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def test_lm_eval_bridge_on_a_local_task(capsys, tiny_dirs, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from svdadapt.assets import polarity_split

    rows = [{"text": s, "label": int(y == "negative")} for s, y in polarity_split(True)[:6]]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tiny_polarity.yaml").write_text(LOCAL_TASK.format(data=tmp_path / "data.jsonl"))
    base = ["eval", tiny_dirs["llama"], "--lm-eval-include", tmp_path, "--device", "cpu"]
    assert "lm-eval has no task 'nosuch'" in bad(capsys, *base, "--tasks", "lm-eval:nosuch")
    code, out, err = run(capsys, *base, "--tasks", "lm-eval:tiny_polarity", "--out", tmp_path / "r.json")
    assert code == 0, err
    metrics = json.loads((tmp_path / "r.json").read_text())["tasks"]["lm-eval:tiny_polarity"]
    assert metrics["examples"] == 6 and 0.0 <= metrics["acc"] <= 1.0 and "lm-eval:tiny_polarity" in out
