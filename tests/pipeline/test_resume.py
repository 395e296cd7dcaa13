"""`svdadapt run RECIPE --resume`: finished stages are kept, an interrupted calibration or a
checkpointed training continues, and from the first stage that runs again everything after it is
made anew (what the earlier run left there removed first)."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
import transformers
import yaml

from svdadapt import CovarianceStore
from svdadapt.calibrate import capture
from svdadapt.cli import main
from svdadapt.pipeline.listing import listing

from ..helpers import said

TRAIN = {"task": "sft", "data": "polarity", "train_samples": 16, "eval_samples": 4, "max_length": 160}


def write_recipe(path, tiny_dirs, out, **stages):
    recipe = {"model": str(tiny_dirs["llama"]), "out": str(out), "device": "cpu",
              "calibrate": {"data": "news", "samples": 8, "seq_len": 32, "batch_size": 2},
              "build": {"method": "corda-kpa", "rank": 4}, **stages}  # fmt: skip
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def fingerprint(path):
    return listing(path)


def test_a_rerun_keeps_what_is_done_and_redoes_what_changed(capsys, tiny_dirs, tmp_path):
    out = tmp_path / "out"
    eval_stage = {"perplexity": "news", "seq_len": 64, "max_windows": 4}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_dirs, out, train={**TRAIN, "max_steps": 2}, eval=eval_stage)
    assert main(["run", recipe]) == 0, said(capsys)[1]
    paths = [out / "covariances", out / "run", out / "eval.json"]
    before = [fingerprint(p) for p in paths]
    said(capsys)

    assert main(["run", recipe]) == 2  # the same out again: said, nothing touched
    err = said(capsys)[1].strip()
    assert "holds an earlier run of a pipeline" in err and "--resume" in err and len(err.splitlines()) == 1
    assert [fingerprint(p) for p in paths] == before

    assert main(["run", recipe, "--resume"]) == 0
    text = said(capsys)[0]
    assert text.count("kept from the earlier run (the same options") == 4 and "4 kept from the earlier run" in text
    assert [fingerprint(p) for p in paths] == before  # nothing ran

    # a later stage's option: only that stage runs again (the overrides may follow the flag)
    assert main(["run", recipe, "--resume", "eval.max_windows=2"]) == 0
    text = said(capsys)[0]
    assert text.count("kept from the earlier run (the same options") == 3 and "max_windows: 4 → 2" in text
    assert [fingerprint(p) for p in paths[:2]] == before[:2] and fingerprint(paths[2]) != before[2]
    results = json.loads(paths[2].read_text())
    assert "news" in json.dumps(results)

    # a training option: training wrote the built run in place, so build runs again, then train and eval
    adapter = (out / "run" / "adapter_state.safetensors").read_bytes()
    assert main(["run", recipe, "train.module_lr=0.01", "--resume"]) == 0
    text = said(capsys)[0]
    assert text.count("kept from the earlier run (the same options") == 1  # calibrate
    assert "a later stage writes there in place" in text
    assert fingerprint(paths[0]) == before[0]
    assert (out / "run" / "adapter_state.safetensors").read_bytes() != adapter
    run = json.loads((out / "run" / "run.json").read_text())
    assert run["stage"] == "trained"
    journal = json.loads((out / "pipeline.json").read_text())
    assert [s["name"] for s in journal["stages"]] == ["calibrate", "build", "train", "eval"]
    assert journal["stages"][2]["options"]["module_lr"] == 0.01

    # a file of the user's inside an output the pipeline would replace: refused, nothing lost
    (out / "run" / "NOTES.txt").write_text("mine")
    assert main(["run", recipe, "train.module_lr=0.02", "--resume"]) == 2
    assert "holds 1 file(s) no stage of this pipeline wrote (NOTES.txt)" in said(capsys)[1]
    assert (out / "run" / "NOTES.txt").read_text() == "mine"
    (out / "run" / "NOTES.txt").unlink()

    # a stage the earlier runs made, now changed: what they left at its output is replaced, not refused
    assert main(["run", recipe, "train.module_lr=0.01", "build.rank=2", "--resume"]) == 0
    assert "rank: 4 → 2" in said(capsys)[0]
    assert json.loads((out / "run" / "run.json").read_text())["rank"] == 2


def test_an_interrupted_calibration_and_a_checkpointed_training_continue(capsys, tiny_dirs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    train = {**TRAIN, "train_samples": 32, "epochs": 2, "save_checkpoints": True, "order": "length"}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_dirs, out, train=train)
    reference = tmp_path / "reference"
    calibrate = ["calibrate", "--model", str(tiny_dirs["llama"]), "--data", "news", "--samples", "8",
                 "--seq-len", "32", "--batch-size", "2", "--device", "cpu", "--out", str(reference)]  # fmt: skip
    assert main(calibrate) == 0
    said(capsys)

    stop_after(monkeypatch, capture.InputCapture, "end_batch", 5)  # halfway through the second block
    assert main(["run", recipe]) == 130
    assert "continue the pipeline with --resume" in said(capsys)[1]
    assert (out / "covariances" / ".partial").is_dir() and not (out / "run").exists()
    monkeypatch.undo()

    stop_after(monkeypatch, transformers.Trainer, "training_step", 6)  # in the second epoch, past checkpoint 4
    assert main(["run", recipe, "--resume"]) == 130
    text = said(capsys)[0]
    assert f"continuing the calibrate found at {out / 'covariances'}" in text
    assert_same_store(CovarianceStore.load(out / "covariances"), CovarianceStore.load(reference))
    assert json.loads((out / "run" / "run.json").read_text())["stage"] == "training"
    assert (out / "run" / "checkpoints" / "checkpoint-4").is_dir()
    monkeypatch.undo()

    other = tmp_path / "other"
    shutil.copytree(out, other)  # the same state, for a resume under other options below
    cut = out / "run" / "checkpoints" / "checkpoint-6"
    cut.mkdir()  # a checkpoint Ctrl-C cut short while Trainer was writing it
    (cut / "trainable.safetensors").write_bytes(b"")
    moved = tmp_path / "moved"
    out.rename(moved)  # the pipeline folder moved as a whole keeps its record

    store = fingerprint(moved / "covariances")
    assert main(["run", recipe, f"out={moved}", "--resume"]) == 0
    text = said(capsys)[0]
    assert text.count("kept from the earlier run (the same options") == 2 and "continuing the train found at" in text
    assert "checkpoint-6 was cut short while being saved" in text
    assert fingerprint(moved / "covariances") == store
    results = json.loads((moved / "run" / "train_results.json").read_text())
    assert results["steps"] == 8 and results["steps_this_session"] == 4  # from checkpoint 4, not from scratch
    shutil.rmtree(moved / "run" / "checkpoints")  # freeing the disk takes nothing from the trained run
    assert main(["run", recipe, f"out={moved}", "--resume"]) == 0
    assert said(capsys)[0].count("kept from the earlier run (the same options") == 3

    # an interrupted training is continued only under the options it began with; else built and trained anew
    assert main(["run", recipe, f"out={other}", "train.module_lr=0.01", "--resume"]) == 0
    text = said(capsys)[0]
    assert "continuing" not in text and text.count("kept from the earlier run (the same options") == 1
    assert "build runs again" in text and "train runs again: it did not finish before" in text
    results = json.loads((other / "run" / "train_results.json").read_text())
    assert results["steps"] == 8 and results["steps_this_session"] == 8


def test_an_interrupted_stage_under_changed_options_or_without_checkpoints_starts_over(
    capsys, tiny_dirs, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_dirs, out, train={**TRAIN, "max_steps": 3})
    stop_after(monkeypatch, capture.InputCapture, "end_batch", 3)
    assert main(["run", recipe]) == 130
    monkeypatch.undo()
    assert main(["run", recipe, "calibrate.samples=6", "--resume"]) == 0, said(capsys)[1]  # the partial is dropped
    assert "continuing" not in said(capsys)[0]
    assert CovarianceStore.load(out / "covariances").metadata["samples"] == 6

    for run in (out / "run", tmp_path / "elsewhere" / "run"):  # inside the pipeline's folder, and outside it
        where = ["calibrate.samples=6", f"build.out={run}", f"train.out={run}"]
        stop_after(monkeypatch, transformers.Trainer, "training_step", 2)  # no checkpoints: nothing to continue
        assert main(["run", recipe, *where, "train.max_steps=4", "--resume"]) == 130
        monkeypatch.undo()
        said(capsys)
        assert json.loads((run / "run.json").read_text())["stage"] == "training"
        assert main(["run", recipe, *where, "train.max_steps=4", "--resume"]) == 0, said(capsys)[1]
        text = said(capsys)[0]
        assert text.count("kept from the earlier run (the same options") == 1 and "build runs again" in text
        assert json.loads((run / "train_results.json").read_text())["steps_this_session"] == 4


def test_a_store_another_recipe_made_is_reused_and_what_others_add_is_left(capsys, tiny_dirs, tmp_path):
    shared = tmp_path / "shared-store"
    first = write_recipe(tmp_path / "a.yaml", tiny_dirs, tmp_path / "a")
    assert main(["run", first, f"calibrate.out={shared}"]) == 0
    second = write_recipe(tmp_path / "b.yaml", tiny_dirs, tmp_path / "b", merge={}, eval={"perplexity": "news",
                          "seq_len": 64, "max_windows": 2, "out": None})  # fmt: skip
    store = fingerprint(shared)
    assert main(["run", second, f"calibrate.out={shared}"]) == 2  # not this pipeline's: refused, not replaced
    assert "already holds a covariance store" in said(capsys)[1]
    assert main(["run", second, f"calibrate.out={shared}", "--resume"]) == 0
    assert "already holds this calibration; nothing to do" in said(capsys)[0]
    assert fingerprint(shared) == store
    assert main(["run", second, f"calibrate.out={shared}", "--resume"]) == 0  # eval's results in the run: no rerun
    assert said(capsys)[0].count("kept from the earlier run (the same options") == 4
    assert main(["run", second, f"calibrate.out={shared}", "calibrate.samples=6", "--resume"]) == 2
    assert "another spec" in said(capsys)[1] and fingerprint(shared) == store  # never removed: not its own
    # eval without out writes into the run: a file added there later does not make build run again
    assert (tmp_path / "b" / "run" / "eval" / "results.json").is_file()
    assert main(["run", second, f"calibrate.out={shared}", "eval.max_windows=1", "--resume"]) == 0
    assert said(capsys)[0].count("kept from the earlier run (the same options") == 3
    # nor does eval rewriting its results in the run make merge (which read the run before) run again
    assert main(["run", second, f"calibrate.out={shared}", "eval.max_windows=3", "--resume"]) == 0
    assert said(capsys)[0].count("kept from the earlier run (the same options") == 3
    # how a stage runs (scratch space, offloading) is not what it makes
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    resume = ["run", second, f"calibrate.out={shared}", "eval.max_windows=3", "--resume"]
    assert main([*resume, f"calibrate.hidden_states_dir={scratch}", "calibrate.offload=off"]) == 0
    assert said(capsys)[0].count("kept from the earlier run (the same options") == 4
    # what a run killed while removing an output left aside is cleared by the next
    (tmp_path / "b" / ".merged.stale").mkdir()
    assert main(resume) == 0 and not (tmp_path / "b" / ".merged.stale").exists()


def test_an_input_from_outside_that_changed_is_not_trusted(capsys, tiny_dirs, tmp_path, monkeypatch):
    from svdadapt.assets import news_text

    text = tmp_path / "notes.txt"
    text.write_text(news_text()[:6000])
    recipe = write_recipe(tmp_path / "r.yaml", tiny_dirs, tmp_path / "out")
    assert main(["run", recipe, f"calibrate.data={text}"]) == 0
    assert main(["run", recipe, f"calibrate.data={text}", "--resume"]) == 0
    assert said(capsys)[0].count("kept from the earlier run (the same options") == 2
    text.write_text(news_text()[6000:12000])  # the same name, other text
    assert main(["run", recipe, f"calibrate.data={text}", "--resume"]) == 0
    out = said(capsys)[0]
    assert (
        "kept from the earlier run (the same options" not in out
        and f"{text}, which it read, changed after it began" in out
    )

    # read as the stage began: a file changed while the stage ran is not the one recorded
    real = capture.InputCapture.end_batch

    def edit_midway(self, calls={"n": 0}):  # noqa: B006
        real(self)
        calls["n"] += 1
        if calls["n"] == 2:
            text.write_text(news_text()[:6000])

    monkeypatch.setattr(capture.InputCapture, "end_batch", edit_midway)
    assert main(["run", recipe, f"calibrate.data={text}", "calibrate.seed=1", "--resume"]) == 0
    monkeypatch.undo()
    said(capsys)
    assert main(["run", recipe, f"calibrate.data={text}", "calibrate.seed=1", "--resume"]) == 0
    assert f"{text}, which it read, changed after it began" in said(capsys)[0]

    # an interrupted calibration whose text changed starts over, not a mix of both texts
    stop_after(monkeypatch, capture.InputCapture, "end_batch", 3)
    assert main(["run", recipe, f"calibrate.data={text}", "calibrate.seed=2", "--resume"]) == 130
    monkeypatch.undo()
    text.write_text(news_text()[12000:18000])
    assert main(["run", recipe, f"calibrate.data={text}", "calibrate.seed=2", "--resume"]) == 0
    assert "continuing" not in said(capsys)[0]

    # a build that read another pipeline's store is not kept once that store was made anew
    other = write_recipe(tmp_path / "o.yaml", tiny_dirs, tmp_path / "other")
    build_only = yaml.safe_load((tmp_path / "o.yaml").read_text())
    del build_only["calibrate"]
    build_only["build"]["covariances"] = str(tmp_path / "out" / "covariances")
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(build_only))
    assert main(["run", other]) == 0
    assert main(["run", recipe, f"calibrate.data={text}", "calibrate.seed=3", "--resume"]) == 0
    said(capsys)
    assert main(["run", other, "--resume"]) == 0
    assert f"{tmp_path / 'out' / 'covariances'}, which it read, changed after it began" in said(capsys)[0]

    # each file of a comma-separated list is an input
    evaluated = write_recipe(tmp_path / "e.yaml", tiny_dirs, tmp_path / "ev")
    ev = ["run", evaluated, f"eval.perplexity=news,{text}", "eval.seq_len=64", "eval.max_windows=2"]
    assert main(ev) == 0
    text.write_text(news_text()[:6000])
    assert main([*ev, "--resume"]) == 0
    assert f"{text}, which it read, changed after it began" in said(capsys)[0]


def test_a_relative_stage_out_names_the_folder_it_was_run_from(capsys, tiny_dirs, tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_dirs, tmp_path / "out")
    (tmp_path / "one").mkdir()
    (tmp_path / "two" / "store").mkdir(parents=True)
    precious = tmp_path / "two" / "store" / "weights.txt"
    precious.write_text("the user's")
    monkeypatch.chdir(tmp_path / "one")
    assert main(["run", recipe, "calibrate.out=store"]) == 0
    monkeypatch.chdir(tmp_path / "two")  # store/ here is another folder, not the pipeline's
    assert main(["run", recipe, "calibrate.out=store", "--resume"]) == 2
    assert "calibrate runs again: its options changed (out:" in said(capsys)[0]
    assert precious.read_text() == "the user's"
    monkeypatch.chdir(tmp_path / "one")
    assert main(["run", recipe, "calibrate.out=store", "--resume"]) == 0
    assert said(capsys)[0].count("kept from the earlier run (the same options") == 2


def test_a_linked_output_folder_is_written_where_the_link_leads(tiny_dirs, tmp_path):
    real = tmp_path / "big-disk" / "run"
    real.mkdir(parents=True)
    (tmp_path / "run").symlink_to(real)
    build = ["build", "--model", str(tiny_dirs["llama"]), "--method", "pissa", "--rank", "4", "--device", "cpu"]
    for _ in range(2):  # into the empty folder, then over the run built there
        assert main([*build, "--out", str(tmp_path / "run")]) == 0
        assert (tmp_path / "run").is_symlink() and (real / "run.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big-disk", "run"]
    assert sorted(p.name for p in real.parent.iterdir()) == ["run"]  # no old copy left beside it


def test_what_is_not_the_pipelines_is_never_removed_nor_trained_over(capsys, tiny_dirs, tmp_path):
    # a store the pipeline made outside its folder, replaced since by the user's own at that path
    shared = tmp_path / "shared"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_dirs, tmp_path / "out")
    assert main(["run", recipe, f"calibrate.out={shared}"]) == 0
    shutil.rmtree(shared)
    calibrate = ["calibrate", "--model", str(tiny_dirs["llama"]), "--data", "news", "--samples", "4",
                 "--seq-len", "32", "--device", "cpu", "--out", str(shared)]  # fmt: skip
    assert main(calibrate) == 0
    users = fingerprint(shared)
    said(capsys)
    assert main(["run", recipe, f"calibrate.out={shared}", "calibrate.samples=6", "--resume"]) == 2
    assert "another spec" in said(capsys)[1] and fingerprint(shared) == users

    # a run built before the pipeline and trained in place by it cannot be trained again from its start
    external = tmp_path / "external"
    build = ["build", "--model", str(tiny_dirs["llama"]), "--method", "pissa", "--rank", "4", "--device", "cpu"]
    assert main([*build, "--out", str(external)]) == 0
    trains = tmp_path / "t.yaml"
    train = {**TRAIN, "max_steps": 2, "run": str(external), "out": None}
    trains.write_text(yaml.safe_dump({"out": str(tmp_path / "t"), "device": "cpu", "train": train}))
    assert main(["run", str(trains)]) == 0
    adapter = (external / "adapter_state.safetensors").read_bytes()
    said(capsys)
    assert main(["run", str(trains), "train.module_lr=0.01", "--resume"]) == 2
    err = said(capsys)[1]
    assert "train must run again, but" in err and "is not what this pipeline created there" in err
    assert (external / "adapter_state.safetensors").read_bytes() == adapter


def test_one_run_of_a_pipeline_at_a_time(capsys, tiny_dirs, tmp_path):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_dirs, out)
    assert main(["run", recipe]) == 0
    before = [fingerprint(out / name) for name in ("covariances", "run")]
    code = "from svdadapt.atomic import exclusive\nimport sys, time\nwith exclusive(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"  # noqa: E501
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(out / "pipeline.json")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["run", recipe, "build.rank=2", "--resume"]) == 2
        assert "being written by another svdadapt process" in said(capsys)[1]
        assert [fingerprint(out / name) for name in ("covariances", "run")] == before  # nothing removed
    finally:
        holder.kill()
        holder.wait()


def test_text_too_long_for_a_path_is_not_a_path(tmp_path):
    from svdadapt.pipeline.journal import Journal
    from svdadapt.pipeline.listing import exists

    journal = Journal(tmp_path)
    long = ",".join(["q_proj"] * 200)
    assert not exists(long) and not exists("x" * 5000)  # too long for a file name: not an error
    assert journal.record({"targets": long}) == {"targets": long} and journal.outside_inputs({"targets": long}) == {}


def test_bad_journals_and_launches_are_one_line(capsys, tiny_dirs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_dirs, out)
    out.mkdir()
    (out / "pipeline.json").write_text("{not json")
    assert main(["run", recipe, "--resume"]) == 2
    assert "is not an svdadapt pipeline journal" in said(capsys)[1]
    (out / "pipeline.json").write_text(
        json.dumps(
            {
                "format": "svdadapt-pipeline-1",
                "made": [],
                "stages": [{"name": "calibrate", "options": [], "outputs": {}, "state": {}}],
            }
        )
    )  # a hand edit of the wrong type
    assert main(["run", recipe, "--resume"]) == 2
    assert "is not an svdadapt pipeline journal" in said(capsys)[1]
    (out / "pipeline.json").unlink()
    for bad, said_ in (("out=", "must name the pipeline's folder"), ("out=null", "must name the pipeline's folder"),
                       (f"out={recipe}", "is a file; name a folder"), (f"out={recipe}/x", "is a file; name a folder"),
                       (f"build.out={out}", "is the pipeline's folder or holds it"),
                       (f"calibrate.out={tmp_path}", "is the pipeline's folder or holds it"),
                       (f"calibrate.out={out}/run/covs", "lies inside build's output")):  # fmt: skip
        assert main(["run", recipe, bad]) == 2
        err = said(capsys)[1]
        assert said_ in err and len(err.strip().splitlines()) == 1, err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", recipe, "--resume"]) == 2
    assert "run --resume works in one process" in said(capsys)[1]
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(SystemExit):
        main(["run", recipe, "--resume", "--bogus"])
    assert "unrecognized arguments: --bogus" in said(capsys)[1]


def stop_after(monkeypatch, owner, name, calls):
    """``owner.name`` raises KeyboardInterrupt (Ctrl-C) on its ``calls``-th call."""
    original, count = getattr(owner, name), {"n": 0}

    def stopping(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, stopping)


def assert_same_store(a: CovarianceStore, b: CovarianceStore) -> None:
    assert a.modules == b.modules and a.num_tokens == b.num_tokens
    for name in a.modules:
        assert torch.equal(a.covariance(name), b.covariance(name)), name
