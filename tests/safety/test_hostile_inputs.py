"""The second hostile-use probe's cases, built from scratch on the tiny models: results that look fine
and are not (non-finite values, diverged training, a config that does not match its weights),
option values that would allocate without bound, links that lead out of a run or store, and the
faults that used to end in a traceback. Each ends with exit status 2 and one line on stderr (or, at
the API, an SvdadaptError/TypeError naming the argument); nothing non-finite is written and nothing
outside the command's own output changes."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from svdadapt.cli import main
from svdadapt.errors import SvdadaptError
from svdadapt.files import file_record

TRAIN = ["--task", "sft", "--data", "polarity", "--train-samples", "8", "--eval-samples", "2", "--max-length", "160",
         "--device", "cpu"]  # fmt: skip


def one_line(capsys, *args) -> str:
    code = main([str(a) for a in args])
    lines = capsys.readouterr().err.splitlines()  # progress bars share lines with it
    err = [line[line.index("svdadapt:") :] for line in lines if "svdadapt:" in line]
    assert code == 2 and len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------------------ non-finite results
def test_an_infinite_alpha_is_refused_before_anything_is_written(capsys, made, tmp_path):
    err = one_line(capsys, "build", "--model", made["model"], "--method", "pissa", "--rank", "4", "--alpha", "inf",
                   "--out", tmp_path / "run", "--device", "cpu")  # fmt: skip
    assert "--alpha must be a finite number" in err and not (tmp_path / "run").exists()


def test_a_diverged_training_stops_unfinished_and_cannot_be_merged(capsys, made, tmp_path):
    run = shutil.copytree(made["run"], tmp_path / "run")
    err = one_line(capsys, "train", run, *TRAIN, "--max-steps", "8", "--module-lr", "4e9", "--save-checkpoints")
    assert "training diverged at step" in err and "not marked trained" in err
    meta = json.loads((run / "run.json").read_text())
    assert meta["stage"] == "training" and not (run / "train_results.json").exists()
    for checkpoint in (run / "checkpoints").glob("checkpoint-*"):  # every checkpoint kept is finite
        assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "trainable.safetensors").values())
    assert "mid-training" in one_line(capsys, "merge", run, "--out", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_a_nan_adapter_with_consistent_records_is_never_merged(capsys, made, tmp_path):
    run = shutil.copytree(made["run"], tmp_path / "run")
    state = run / "adapter_state.safetensors"
    tensors = load_file(state)
    key = next(k for k in tensors if k.endswith(".B"))
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, state)
    meta = json.loads((run / "run.json").read_text())
    meta["files"]["adapter_state.safetensors"] = file_record(state)  # the records agree with the damage
    (run / "run.json").write_text(json.dumps(meta))
    err = one_line(capsys, "merge", run, "--out", tmp_path / "merged")
    assert "non-finite" in err and not (tmp_path / "merged").exists()
    err = one_line(capsys, "export", run, "--against-original", made["model"], "--out", tmp_path / "exported")
    assert "non-finite" in err and not (tmp_path / "exported").exists()


def test_json_writers_refuse_numbers_json_cannot_hold(tmp_path):
    from svdadapt.atomic import write_json

    with pytest.raises(SvdadaptError, match="training.loss is not a finite number"):
        write_json(tmp_path / "x.json", {"training": {"loss": math.nan}})
    assert not (tmp_path / "x.json").exists()


# ------------------------------------------------------------------------------------------ config vs weights
@pytest.mark.parametrize("layers", [3, 100000, 1])
def test_a_config_that_does_not_match_its_weights_is_refused_before_building(capsys, made, tmp_path, layers):
    model = shutil.copytree(made["model"], tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "num_hidden_layers": layers}))
    err = one_line(capsys, "eval", model, "--perplexity", "news", "--seq-len", "32", "--max-windows", "1")
    assert f"asks for {layers} blocks" in err and "the weights hold 2" in err


def test_missing_weights_are_refused_after_loading(made, tmp_path):
    from svdadapt.models import load_model

    model = shutil.copytree(made["model"], tmp_path / "model")
    weights = load_file(model / "model.safetensors")
    dropped = next(k for k in weights if k.endswith("mlp.up_proj.weight"))
    del weights[dropped]
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SvdadaptError, match=f"lacks 1 weight.*{dropped}"):
        load_model(str(model))


# ------------------------------------------------------------------------------------------ smaller ones
def test_train_run_refuses_a_model_it_would_ignore(capsys, made):
    err = one_line(capsys, "train", made["run"], "--model", made["model"], *TRAIN)
    assert "--model" in err and "built already" in err


def test_a_negative_covariance_is_called_damaged_not_unreached(made, tmp_path):
    from svdadapt.decompose import covariance_context

    with pytest.raises(SvdadaptError, match="negative diagonal.*damaged"):
        covariance_context(-torch.eye(4), name="layer")
    with pytest.raises(SvdadaptError, match="is zero: calibration never reached"):
        covariance_context(torch.zeros(4, 4), name="layer")


def test_bf16_and_fp16_together_are_one_line(capsys, made):
    assert "--bf16 and --fp16" in one_line(capsys, "train", made["run"], *TRAIN, "--bf16", "--fp16")


# ------------------------------------------------------------------------------------------ resources
def test_samples_beyond_memory_are_refused_before_they_are_made(capsys, made, monkeypatch):
    from svdadapt import backend

    monkeypatch.setattr(backend, "free_memory", lambda device: 64 << 20)  # a machine with 64 MiB free
    err = one_line(capsys, "calibrate", "--model", made["model"], "--data", made["text"], "--samples", "100000",
                   "--seq-len", "64", "--device", "cpu", "--out", made["store"].parent / "big")  # fmt: skip
    assert "would take about" in err and "lower --samples" in err
    assert not (made["store"].parent / "big").exists()


def test_more_windows_than_the_text_holds_are_capped(made):
    from svdadapt.data import make_samples, resolve
    from svdadapt.models import load_tokenizer

    corpus = resolve(str(made["text"]))
    text_length = len("\n\n".join(corpus.documents))
    samples = make_samples(corpus, load_tokenizer(str(made["model"])), text_length + 50, 16)
    assert len(samples) == text_length


# ------------------------------------------------------------------------------------------ containment
@pytest.mark.parametrize("what", ["run.json", "base", "store.json"])
def test_links_leading_out_of_a_run_or_store_are_refused(capsys, made, tmp_path, what):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    if what == "store.json":
        target = shutil.copytree(made["store"], tmp_path / "store")
        use = ["build", "--model", made["model"], "--method", "corda-kpa", "--rank", "4", "--covariances", target,
               "--out", tmp_path / "r2", "--device", "cpu"]  # fmt: skip
    else:
        target = shutil.copytree(made["run"], tmp_path / "run")
        use = ["merge", target, "--out", tmp_path / "merged"]
        if what == "base":
            (target / "run.json").write_text((target / "run.json").read_text())
    moved = outside / what
    shutil.move(target / what, moved)
    (target / what).symlink_to(moved)
    err = one_line(capsys, *use)
    assert "a link that leads outside it" in err and what in err


# ------------------------------------------------------------------------------------------ tracebacks
def test_deeply_nested_json_is_one_line(capsys, made, tmp_path):
    run = shutil.copytree(made["run"], tmp_path / "run")
    (run / "run.json").write_text("[" * 100000 + "]" * 100000)
    assert "nested too deeply" in one_line(capsys, "merge", run, "--out", tmp_path / "m")


def test_a_full_disk_while_merging_is_one_line_naming_the_output(made, tmp_path):
    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); "
        "from svdadapt.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    out = tmp_path / "merged"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-c", script, "merge", str(made["run"]), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stderr.splitlines() if line.startswith("svdadapt:")]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(out) in lines[0] and not out.exists()


def test_the_api_says_which_argument_is_wrong(made):
    from svdadapt import CovarianceStore, collect_covariances
    from svdadapt.commands import EvalOptions
    from svdadapt.models import load_model
    from svdadapt.runs import Run

    model = load_model(str(made["model"])).model
    with pytest.raises(SvdadaptError, match="saw no token"):
        collect_covariances(model, [])
    with pytest.raises(SvdadaptError, match="calibration batch 0"):
        collect_covariances(model, ["not a batch"])
    with pytest.raises(SvdadaptError, match="`input_ids` must be"):
        collect_covariances(model, [{"input_ids": torch.ones(2, 3)}])
    with pytest.raises(SvdadaptError, match="unknown --device 'nosuchdev'"):
        Run.open(made["run"]).load_adapted(device="nosuchdev")
    with pytest.raises(TypeError, match="store's path"):
        CovarianceStore.load(123)
    with pytest.raises(SvdadaptError, match="TARGET is required"):
        EvalOptions.of(target=None)


# ------------------------------------------------------------------------------------------ every numeric option
BAD = (math.inf, -math.inf, math.nan, 0, -1, 10**12)
MEANINGFUL = {  # (flag, value) a command takes as it says, not a value out of range
    ("--seed", 0), ("--eval-samples", 0), ("--num-fewshot", 0), ("--max-steps", -1), ("--weight-decay", 0),
    ("--warmup-ratio", 0), ("--dropout", 0), ("--beta", 0), ("--gamma", 0), ("--quant-iters", 0),
    ("--l2-init", 0),
}  # fmt: skip
REQUIRED = {"model": "m", "out": "o", "data": "news", "run": "r", "target": "t", "method": "kasa", "rank": 4,
            "covariances": "c", "recipe": "r.yaml", "overrides": []}  # fmt: skip


def test_every_numeric_option_refuses_what_is_out_of_range_before_any_model_loads(monkeypatch):
    """inf, -inf, nan, 0, -1 and 10**12 for every numeric flag of every command: one line naming the
    flag when the options are made, except where the value means what the flag says."""
    from svdadapt import models
    from svdadapt.cli import subcommands
    from svdadapt.options import MISSING, _base_type, flat_fields, from_mapping

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    checked = 0
    for name, command in subcommands().items():
        flats = flat_fields(command.options)
        base = {f.dest: REQUIRED[f.dest] for f in flats if f.default is MISSING}
        base |= {"run": "r"} if name == "train" else {}
        for flat in [f for f in flats if _base_type(f.type) in (int, float)]:
            for value in BAD:
                try:
                    from_mapping(command.options, {**base, flat.dest: value}, name)
                except SvdadaptError as exc:
                    assert "\n" not in str(exc) and flat.flag in str(exc), (name, flat.flag, str(exc))
                    checked += 1
                    continue
                assert (flat.flag, value) in MEANINGFUL, f"{name} {flat.flag} {value} is taken"
    assert checked > 100
