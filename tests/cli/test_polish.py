"""Smaller points of the command line: --version, train's readable summary, the calibration bar in
samples, a store's short repr, a failed eval leaving no RUN/eval/, lm-eval missing said first."""

import json

import pytest

import svdadapt
from svdadapt import CovarianceStore
from svdadapt.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as code:
        main(["--version"])
    assert code.value.code == 0 and capsys.readouterr().out.strip() == f"svdadapt {svdadapt.__version__}"


@pytest.fixture(scope="module")
def store(tiny_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "covs"
    args = ["calibrate", "--model", tiny_dirs["llama"], "--data", "news", "--samples", "8", "--seq-len", "32",
            "--batch-size", "3", "--device", "cpu", "--out", out]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    return out


def test_the_calibration_bar_counts_samples(capsys, tiny_dirs, tmp_path):
    args = ["calibrate", "--model", tiny_dirs["llama"], "--data", "news", "--samples", "8", "--seq-len", "32",
            "--batch-size", "3", "--device", "cpu", "--mode", "blockwise", "--out", tmp_path / "covs"]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    bar = [part for part in capsys.readouterr().err.split("\r") if part.startswith("calibrating")]
    assert bar and "| 8/8 [" in bar[-1] and all("/8 [" in part for part in bar)  # 2 blocks, 8 samples: not 16


def test_a_store_prints_as_one_short_line(store):
    loaded = CovarianceStore.load(store)
    for text in (repr(loaded), str(loaded)):
        assert "\n" not in text and len(text) < 200
        assert text.startswith("CovarianceStore('covs', ") and "14 layers" in text and "tokens" in text


def test_train_prints_a_readable_summary(capsys, tiny_dirs, tmp_path):
    args = ["train", "--model", tiny_dirs["llama"], "--method", "lora", "--task", "sft", "--data", "polarity",
            "--train-samples", "16", "--eval-samples", "4", "--max-length", "160", "--max-steps", "3",
            "--device", "cpu", "--out", tmp_path / "run"]  # fmt: skip
    assert main([str(a) for a in args]) == 0
    out = capsys.readouterr().out
    summary = out[out.index("trained run: ") :].splitlines()
    results = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert summary[0] == f"trained run: {tmp_path / 'run'} (merge or export it like a built run)"
    assert summary[1].startswith("  steps       3, on 15 examples, in ")
    assert summary[2].startswith("  task loss   ") and f"mean {results['train_loss']:.4f} over all steps" in summary[2]
    assert summary[3].startswith(f"  eval        loss {results['history'][-1]['loss']:.4f} (epoch ")
    assert summary[-1] == f"  results     {tmp_path / 'run' / 'train_results.json'}"
    assert len(summary) <= 6 and "{" not in "\n".join(summary)  # no JSON blob


def test_a_failed_eval_leaves_no_empty_eval_folder(capsys, store, tiny_dirs, tmp_path):
    run = tmp_path / "run"
    build = ["build", "--model", tiny_dirs["llama"], "--method", "corda-kpa", "--rank", "2", "--covariances", store,
             "--device", "cpu", "--out", run]  # fmt: skip
    assert main([str(a) for a in build]) == 0
    missing = tmp_path / "missing.txt"
    assert main(["eval", str(run), "--perplexity", "news", "--seq-len", "100000"]) == 2  # fails after taking the lock
    assert main(["eval", str(run), "--perplexity", f"{missing}"]) == 2
    assert "svdadapt: error:" in capsys.readouterr().err
    assert not (run / "eval").exists()
    assert main(["eval", str(run), "--perplexity", "news", "--seq-len", "32", "--max-windows", "1"]) == 0
    assert (run / "eval" / "results.json").is_file()


def test_lm_eval_missing_is_said_before_the_hub(capsys, tiny_dirs, monkeypatch):
    monkeypatch.setattr("svdadapt.evaluate.harness.lm_eval_installed", lambda: False)
    monkeypatch.setattr("svdadapt.hub.hub_reachable", lambda *a, **k: False)  # offline too
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["eval", str(tiny_dirs["llama"]), "--tasks", "lm-eval:gsm8k"]) == 2
    err = capsys.readouterr().err
    assert "need lm-evaluation-harness" in err and "pip install svdadapt[eval]" in err and "hub" not in err
