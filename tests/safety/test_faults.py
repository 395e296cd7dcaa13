"""Hostile files, damaged files, concurrent writers and careless commands, built from scratch on the
tiny models and run through the command line: each ends with exit status 2 and exactly one line on
stderr naming the file and what to do; no file a store or run names outside itself is opened (the
check records every path Python opens, by resolution); nothing is lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from svdadapt.atomic import exclusive
from svdadapt.cli import main

from ..helpers import ok, one_line

OPENED: list[str] = []
RECORDING = {"on": False}


def _audit(event: str, args: tuple) -> None:
    if RECORDING["on"] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        OPENED.append(os.path.realpath(os.fsdecode(args[0])))


sys.addaudithook(_audit)


def copy(path: Path, to: Path) -> Path:
    shutil.copytree(path, to)
    return to


def build_args(made, out, *extra):
    return ["build", "--model", made["model"], "--method", "corda-kpa", "--rank", "4", "--device", "cpu",
            "--out", out, *extra]  # fmt: skip


# ------------------------------------------------------------------------------------------ security
@pytest.mark.parametrize("escape", ["../outside.safetensors", "ABSOLUTE", "../../../../etc/passwd"])
def test_a_store_that_names_files_outside_itself_is_refused_before_anything_is_opened(escape, made, capsys, tmp_path):
    store = copy(made["store"], tmp_path / "store")
    outside = tmp_path / "outside.safetensors"
    shutil.copy(next(store.glob("*.safetensors")), outside)  # a valid shard: following the name would "work"
    name = str(outside) if escape == "ABSOLUTE" else escape
    meta = json.loads((store / "store.json").read_text())
    first = next(iter(meta["groups"]))
    meta["groups"][first]["shard"] = name
    (store / "store.json").write_text(json.dumps(meta))
    OPENED.clear()
    RECORDING["on"] = True
    try:
        for command in (build_args(made, tmp_path / "run", "--covariances", store),
                        ["compress", "--model", made["model"], "--covariances", store, "--out", tmp_path / "c"],
                        ["train", "--model", made["model"], "--method", "corda-kpa", "--covariances", store,
                         "--task", "sft", "--data", "polarity", "--out", tmp_path / "t"]):  # fmt: skip
            one_line(capsys, *command, names=[name])
    finally:
        RECORDING["on"] = False
    escaped = {os.path.realpath(outside), "/etc/passwd"}
    assert not escaped & set(OPENED)
    assert not (tmp_path / "run").exists() and not (tmp_path / "t").exists()


def test_a_run_that_names_files_outside_itself_is_refused(made, capsys, tmp_path):
    run = copy(made["run"], tmp_path / "run")
    meta = json.loads((run / "run.json").read_text())
    meta["files"]["../stolen.safetensors"] = {"bytes": 1}
    (run / "run.json").write_text(json.dumps(meta))
    one_line(capsys, "merge", run, "--out", tmp_path / "m", names=["../stolen.safetensors"])


# ------------------------------------------------------------------------------------------ writers
def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_lock(made, capsys, tmp_path):
    out = tmp_path / "covs"
    with exclusive(out):  # another writer holds --out
        one_line(capsys, "calibrate", "--model", made["model"], "--data", made["text"], "--samples", "4",
                 "--seq-len", "32", "--device", "cpu", "--out", out,
                 names=[out, "another svdadapt process"])  # fmt: skip
        one_line(capsys, *build_args(made, out, "--data", made["text"]), names=["another svdadapt process"])
    assert not out.exists()
    code = "from svdadapt.atomic import exclusive\nimport sys, time\nwith exclusive(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"  # noqa: E501
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    one_line(capsys, "calibrate", "--model", made["model"], "--data", made["text"], "--samples", "4",
             "--seq-len", "32", "--device", "cpu", "--out", out, names=[f"pid {holder.pid}"])  # fmt: skip
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    ok(capsys, "calibrate", "--model", made["model"], "--data", made["text"], "--samples", "4", "--seq-len", "32",
       "--device", "cpu", "--out", out)  # fmt: skip
    assert (out / "store.json").is_file()


def test_two_calibrations_at_once_leave_one_whole_store(made, capsys, tmp_path):
    args = ["calibrate", "--model", str(made["model"]), "--data", str(made["text"]), "--samples", "600",
            "--seq-len", "64", "--batch-size", "2", "--device", "cpu", "--out", str(tmp_path / "s")]  # fmt: skip
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115 (a pipe would fill with progress bars and block)
    first = subprocess.Popen([sys.executable, "-m", "svdadapt", *args], stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while not (tmp_path / ".s.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    one_line(capsys, *args, names=["another svdadapt process"])  # while the first one calibrates
    assert first.wait() == 0, (tmp_path / "first.log").read_text()[-2000:]
    log.close()
    meta = json.loads((tmp_path / "s" / "store.json").read_text())
    assert sorted(meta["modules"]) == meta["spec"]["targets"]  # every layer the spec names


def test_leftovers_of_a_killed_writer_are_removed_by_the_next(made, capsys, tmp_path):
    (tmp_path / ".run.abcd1234.tmp").mkdir()  # what a build killed mid-write leaves
    (tmp_path / ".run.abcd1234.tmp" / "half").write_text("x")
    (tmp_path / ".run.old.4242").mkdir()
    (tmp_path / ".runs.abcd1234.tmp").mkdir()  # another output's: not touched
    ok(capsys, "build", "--model", made["model"], "--method", "lora", "--rank", "4", "--device", "cpu",
       "--out", tmp_path / "run")  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == [".runs.abcd1234.tmp", "run"]


def test_eval_never_overwrites_what_is_not_an_evaluation(made, capsys, tmp_path):
    run = copy(made["run"], tmp_path / "run")
    before = (run / "run.json").read_bytes()
    data = tmp_path / "data.txt"
    data.write_text("some text\n")
    for out in (run / "run.json", data):
        one_line(capsys, "eval", run, "--perplexity", "news", "--seq-len", "32", "--max-windows", "1",
                 "--out", out, names=[out, "not an svdadapt evaluation"])  # fmt: skip
    assert (run / "run.json").read_bytes() == before and data.read_text() == "some text\n"
    results = tmp_path / "results.json"
    for _ in range(2):  # an earlier evaluation's results are replaced
        ok(capsys, "eval", run, "--perplexity", "news", "--seq-len", "32", "--max-windows", "1", "--out", results)
    assert json.loads(results.read_text())["format"] == "svdadapt.eval"


SFT = ["--task", "sft", "--data", "polarity", "--train-samples", "16", "--eval-samples", "4", "--epochs", "1",
       "--batch-size", "8", "--max-length", "160", "--device", "cpu"]  # fmt: skip


def test_a_trained_run_is_replaced_only_with_overwrite(made, capsys, tmp_path):
    run = copy(made["run"], tmp_path / "run")
    ok(capsys, "train", run, *SFT)
    trained = (run / "adapter_state.safetensors").read_bytes()
    again = ["build", "--model", made["model"], "--method", "pissa", "--rank", "4", "--device", "cpu", "--out", run]
    one_line(capsys, *again, names=[run, "--overwrite"])
    assert (run / "adapter_state.safetensors").read_bytes() == trained and (run / "train_results.json").exists()
    one_line(capsys, "train", made["run"], "--out", run, *SFT, names=[run, "--overwrite"])
    assert (run / "adapter_state.safetensors").read_bytes() == trained
    ok(capsys, *again, "--overwrite")
    assert not (run / "train_results.json").exists()


def test_a_failed_training_into_a_copy_leaves_no_copy(made, capsys, tmp_path, monkeypatch):
    import svdadapt.train.session as session

    monkeypatch.setattr(session, "run_training", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        main([str(a) for a in ["train", made["run"], "--out", tmp_path / "copy", *SFT]])
    assert not (tmp_path / "copy").exists() and not (tmp_path / ".copy.lock").exists()


def test_resume_carries_the_whole_history_and_a_finished_run_is_left_alone(made, capsys, tmp_path, monkeypatch):
    from transformers import TrainerCallback

    import svdadapt.train.session as session

    args = [*SFT[:-8], "--epochs", "2", "--batch-size", "8", "--max-length", "160", "--device", "cpu",
            "--save-checkpoints", "--logging-steps", "1"]  # fmt: skip
    straight = copy(made["run"], tmp_path / "straight")
    ok(capsys, "train", straight, *args)
    expected = json.loads((straight / "train_results.json").read_text())

    class StopAfterFirstSave(TrainerCallback):
        def on_save(self, *a, **k):
            raise KeyboardInterrupt

    real = session.StepTimer
    monkeypatch.setattr(session, "StepTimer", lambda: type("T", (real, StopAfterFirstSave), {})())
    resumed = copy(made["run"], tmp_path / "resumed")
    assert main([str(a) for a in ["train", resumed, *args]]) == 130  # interrupted after epoch 1's checkpoint
    assert "interrupted (continue it with --resume if it ran with --save-checkpoints" in capsys.readouterr().err
    monkeypatch.undo()
    ok(capsys, "train", resumed, *args, "--resume")
    got = json.loads((resumed / "train_results.json").read_text())
    assert got["steps"] == expected["steps"] and len(got["history"]) == len(expected["history"]) == 2
    assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-9)
    a, b = load_file(str(straight / "adapter_state.safetensors")), load_file(str(resumed / "adapter_state.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise, as an uninterrupted run

    before = (resumed / "train_results.json").read_bytes()
    assert "nothing to resume" in ok(capsys, "train", resumed, *args, "--resume")
    assert (resumed / "train_results.json").read_bytes() == before
    assert json.loads((resumed / "run.json").read_text())["stage"] == "trained"


# ------------------------------------------------------------------------------------------ corruption
def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage", ["int32", "shape"])
def test_a_store_with_covariances_of_another_dtype_or_shape_is_refused(damage, made, capsys, tmp_path):
    store = copy(made["store"], tmp_path / "store")
    shard = next(store.glob("*.safetensors"))
    tensors = load_file(str(shard))
    key = next(k for k in tensors if k.endswith(".covariance"))
    tensors[key] = tensors[key].to(torch.int32) if damage == "int32" else tensors[key][:-1, :-1].contiguous()
    save_file(tensors, str(shard))
    meta = json.loads((store / "store.json").read_text())
    meta["files"][shard.name]["bytes"] = shard.stat().st_size  # a consistent size: only the content is wrong
    (store / "store.json").write_text(json.dumps(meta))
    one_line(capsys, *build_args(made, tmp_path / "run", "--covariances", store), names=[shard.name, key])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("file", ["adapter/adapter_model.safetensors", "adapter_state.safetensors"])
def test_a_truncated_run_file_is_noticed_by_every_reader(file, made, capsys, tmp_path):
    run = copy(made["run"], tmp_path / "run")
    truncate(run / file)
    for command in (["merge", run, "--out", tmp_path / "m"], ["export", run, "--out", tmp_path / "e"],
                    ["eval", run, "--perplexity", "news", "--seq-len", "32", "--max-windows", "1"],
                    ["train", run, *SFT]):  # fmt: skip
        one_line(capsys, *command, names=[Path(file).name])
    assert not (tmp_path / "m").exists() and not (tmp_path / "e").exists()


def test_resume_of_a_store_with_a_truncated_shard_does_not_call_it_complete(made, capsys, tmp_path):
    store = copy(made["store"], tmp_path / "store")
    shard = sorted(store.glob("*.safetensors"))[-1]
    truncate(shard)
    one_line(capsys, "calibrate", "--model", made["model"], "--data", made["text"], "--samples", "8",
             "--seq-len", "32", "--batch-size", "4", "--device", "cpu", "--out", store, "--resume",
             names=[shard.name])  # fmt: skip


def test_an_interrupted_calibration_redoes_a_damaged_unit(made, capsys, tmp_path):
    store = copy(made["store"], tmp_path / "store")
    meta = json.loads((store / "store.json").read_text())
    partial = store / ".partial" / "units"  # make it an interrupted run again: units listed, no store.json
    partial.mkdir(parents=True)
    (store / ".partial" / "spec.json").write_text(json.dumps(meta["spec"]))
    shards = sorted(store.glob("*.safetensors"))
    for unit, shard in enumerate(shards):
        groups = [{**g, "key": k, "members": [m for m, gk in meta["modules"].items() if gk == k]}
                  for k, g in meta["groups"].items() if g["shard"] == shard.name]  # fmt: skip
        (partial / f"{unit:05d}.json").write_text(json.dumps({"groups": groups, "file": meta["files"][shard.name]}))
    (store / "store.json").unlink()
    truncate(shards[0])  # the disk lost the first block's shard
    ok(capsys, "calibrate", "--model", made["model"], "--data", made["text"], "--samples", "8", "--seq-len", "32",
       "--batch-size", "4", "--device", "cpu", "--out", store, "--resume")  # fmt: skip
    again = load_file(str(shards[0]))
    original = load_file(str(made["store"] / shards[0].name))
    assert all(torch.equal(again[k], original[k]) for k in original)


# ------------------------------------------------------------------------------------------ one line
def test_damaged_model_directories_are_one_line(made, capsys, tmp_path):
    truncated = copy(made["model"], tmp_path / "truncated")
    truncate(truncated / "model.safetensors")
    one_line(capsys, *build_args(made, tmp_path / "r1", "--data", made["text"]), "--model", truncated,
             names=["model.safetensors", "truncated"])  # fmt: skip
    no_type = copy(made["model"], tmp_path / "no_type")
    config = json.loads((no_type / "config.json").read_text())
    config.pop("model_type")
    (no_type / "config.json").write_text(json.dumps(config))
    one_line(capsys, "eval", no_type, "--perplexity", "news", names=[no_type])
    unknown = copy(made["model"], tmp_path / "unknown")
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "no-such-architecture"}))
    one_line(capsys, "eval", unknown, "--perplexity", "news", names=[unknown])
    no_tokenizer = copy(made["model"], tmp_path / "no_tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (no_tokenizer / name).unlink(missing_ok=True)
    one_line(capsys, "eval", no_tokenizer, "--perplexity", "news", names=["tokenizer", no_tokenizer])
    wrong_shape = copy(made["model"], tmp_path / "wrong_shape")
    (wrong_shape / "config.json").write_text(json.dumps({**config, "model_type": "llama", "intermediate_size": 48}))
    one_line(capsys, "eval", wrong_shape, "--perplexity", "news", names=["wrong_shape"])
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(made["model"] / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    one_line(capsys, "eval", pickled, names=["pickle"])


def test_models_that_cannot_be_loaded_lazily_are_one_line_with_or_without_offload(made, capsys, tmp_path):
    def calibrate(model, *extra):
        return ["calibrate", "--model", model, "--data", made["text"], "--samples", "4", "--seq-len", "32",
                "--device", "cpu", "--out", tmp_path / "store", *extra]  # fmt: skip

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(made["model"] / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    one_line(capsys, *calibrate(pickled, "--offload"), names=["pickle", "safetensors"])
    build = build_args(made, tmp_path / "r", "--offload", "--data", made["text"])
    one_line(capsys, *build, "--model", pickled, names=["pickle"])
    gguf = tmp_path / "gguf"
    gguf.mkdir()
    (gguf / "model-Q8_0.gguf").write_bytes(b"GGUF\x03\x00\x00\x00not loaded")
    for model in (gguf, gguf / "model-Q8_0.gguf"):
        for extra in ((), ("--offload",)):
            one_line(capsys, *calibrate(model, *extra), names=["GGUF", "safetensors", "gguf_file='model-Q8_0.gguf'"])
    remote = copy(made["model"], tmp_path / "remote")
    config = json.loads((remote / "config.json").read_text())
    auto_map = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (remote / "config.json").write_text(json.dumps({**config, "model_type": "x-custom", "auto_map": auto_map}))
    for extra in ((), ("--offload",)):
        one_line(capsys, *calibrate(remote, *extra), names=[remote, "auto_map", "code"])
    assert not (tmp_path / "store").exists()
    # an auto_map beside an architecture transformers has is not needed: the model loads, no code is run
    native = copy(made["model"], tmp_path / "native")
    (native / "config.json").write_text(json.dumps({**config, "auto_map": auto_map}))
    ok(capsys, *calibrate(native, "--offload"))


@pytest.mark.parametrize(
    "content", ["{not json", '{"format": "svdadapt.run"}', '{"format": "svdadapt.run", "version": "1"}', "[]"]
)  # noqa: E501
def test_garbage_run_and_store_files_are_one_line(content, made, capsys, tmp_path):
    run = copy(made["run"], tmp_path / "run")
    (run / "run.json").write_text(content)
    one_line(capsys, "merge", run, "--out", tmp_path / "m", names=["run.json"])
    store = copy(made["store"], tmp_path / "store")
    (store / "store.json").write_text(content.replace("svdadapt.run", "svdadapt.covariance-store"))
    one_line(capsys, *build_args(made, tmp_path / "r", "--covariances", store), names=["store"])


def test_bad_recipes_and_flags_are_one_line(made, capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"model: caf\xe9\n")
    one_line(capsys, "run", recipe, names=[recipe, "UTF-8"])
    stages = "calibrate: {data: news}\nbuild: {method: pissa, rank: [1]}\n"
    recipe.write_text(f"model: {made['model']}\nout: {tmp_path / 'o'}\n{stages}")
    one_line(capsys, "run", recipe, names=["--rank must be an integer"])
    one_line(capsys, "run", recipe, "calibrate.samples=abc", "build.rank=4", names=["--samples must be an integer"])
    assert not (tmp_path / "o").exists()  # checked before the first stage ran
    one_line(capsys, "train", made["run"], *SFT, "--report-to", "no-such-tracker", names=["no-such-tracker"])
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café au lait\n".encode("latin-1") * 100)
    one_line(capsys, "calibrate", "--model", made["model"], "--data", latin, "--seq-len", "32",
             "--out", tmp_path / "c", names=[latin, "UTF-8"])  # fmt: skip
    one_line(capsys, "build", "--model", made["model"], "--method", "pissa", "--rank", "4", "--rank-pattern",
             "no_such_proj=8", "--out", tmp_path / "p", names=["no_such_proj"])  # fmt: skip
    one_line(capsys, "quickstart", "--model", made["model"], "--calib-seq-len", "4096", "--out", tmp_path / "q",
             names=["--calib-seq-len 4096"])  # fmt: skip
    one_line(capsys, "train", made["run"], "--out", tmp_path / "short", *SFT[:-4], "--max-length", "20",
             "--device", "cpu", names=["--max-length"])  # fmt: skip
    assert not (tmp_path / "short").exists()


def test_a_full_disk_while_writing_is_one_line_naming_the_output_and_leaves_nothing(
    made, capsys, tmp_path, monkeypatch
):
    import svdadapt.runs as runs

    def full(target, *args, **kwargs):
        raise OSError(28, "No space left on device", str(target))

    monkeypatch.setattr(runs, "write_safetensors", full)
    args = build_args(made, tmp_path / "run", "--data", made["text"], "--samples", "4", "--seq-len", "32")
    message = one_line(capsys, *args, names=["No space left", "run/adapter_state"])
    assert ".tmp" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ smaller
def test_files_written_take_the_usual_mode_and_epoch_lines_have_a_loss(made, capsys, tmp_path):
    old = os.umask(0o022)
    try:
        run = copy(made["run"], tmp_path / "run")
        out = ok(capsys, "train", run, *SFT, "--logging-steps", "50")  # no log step inside the epoch
    finally:
        os.umask(old)
    for name in ("adapter_state.safetensors", "adapter/adapter_model.safetensors", "run.json"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch 0:")]
    assert epoch_lines and "train_loss: nan" not in epoch_lines[0] and "train_loss: None" not in epoch_lines[0]
