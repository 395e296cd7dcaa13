"""A command removes or replaces only what it created itself, decided before anything can fail: a
refused or failed command leaves every folder and file of the user's as it was (sizes, modification
times and links compared before and after)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from svdadapt import CovarianceStore
from svdadapt.atomic import exclusive
from svdadapt.cli import main
from svdadapt.errors import SvdadaptError

from ..helpers import refused


def tree(path: Path) -> dict[str, str]:
    """Every entry under ``path`` (links as links, not followed) with its size and mtime, or its target."""
    found = {}
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in [*dirs, *files]:
            p = Path(root) / name
            st = os.lstat(p)
            found[str(p.relative_to(path))] = os.readlink(p) if p.is_symlink() else f"{st.st_size}:{st.st_mtime_ns}"
    return found


TRAIN = ["--task", "sft", "--data", "polarity", "--train-samples", "4", "--eval-samples", "2", "--max-steps", "1",
         "--device", "cpu"]  # fmt: skip


def test_train_out_an_existing_folder_that_is_no_run_is_refused_and_kept(capsys, made, tmp_path):
    docs = tmp_path / "mydocs"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    before = tree(docs)
    err = refused(capsys, "train", made["run"], "--out", docs, *TRAIN)
    assert "is not an svdadapt run" in err
    assert docs.is_dir() and tree(docs) == before


@pytest.mark.parametrize("which", ["model", "store", "base"])
def test_train_out_an_input_is_refused_and_the_input_kept(capsys, made, tmp_path, which):
    run = shutil.copytree(made["run"], tmp_path / "run")
    target = {"model": made["model"], "store": made["store"], "base": run / "base"}[which]
    before = tree(target)
    if which == "model":
        refused(capsys, "train", "--model", made["model"], "--method", "lora", "--out", target, *TRAIN)
    else:
        refused(capsys, "train", run, "--out", target, *TRAIN)
    assert target.is_dir() and tree(target) == before


def test_a_failed_training_into_a_new_folder_leaves_nothing(capsys, made, tmp_path):
    out = tmp_path / "new"
    refused(capsys, "train", made["run"], "--out", out, "--task", "sft", "--data", tmp_path / "missing.jsonl")
    assert not os.path.lexists(out)


def test_spectra_never_overwrites_a_file_it_was_not_told_to(capsys, made, tmp_path):
    png = tmp_path / "mine.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"a user's picture")
    before = tree(tmp_path)
    args = ["spectra", "--model", made["model"], "--covariances", made["store"], "--device", "cpu"]
    assert "--overwrite" in refused(capsys, *args, "--out", png)
    assert tree(tmp_path) == before
    text = tmp_path / "notes.png"
    text.write_text("not a picture at all")
    before = tree(tmp_path)
    assert "is not a PNG" in refused(capsys, *args, "--out", text, "--overwrite")
    assert tree(tmp_path) == before
    assert main([str(a) for a in (*args, "--out", png, "--overwrite")]) == 0
    assert png.read_bytes().startswith(b"\x89PNG") and len(png.read_bytes()) > 1000


def test_a_store_is_never_saved_over_a_folder_that_is_not_a_store(made, tmp_path):
    run = shutil.copytree(made["run"], tmp_path / "run")
    before = tree(run)
    store = CovarianceStore.load(made["store"])
    with pytest.raises(SvdadaptError, match="is not a covariance store"):
        store.save(run)
    assert tree(run) == before
    store.save(tmp_path / "again")  # a new folder, then over a store: both fine
    store.save(tmp_path / "again")
    assert CovarianceStore.load(tmp_path / "again").modules == store.modules


def test_eval_out_a_link_writes_where_it_leads_and_keeps_the_link(capsys, made, tmp_path):
    real = tmp_path / "kept" / "results.json"
    real.parent.mkdir()
    link = tmp_path / "latest.json"
    link.symlink_to(real)
    args = ["eval", made["run"], "--perplexity", "news", "--seq-len", "32", "--max-windows", "2", "--device", "cpu"]
    assert main([str(a) for a in (*args, "--out", link)]) == 0
    capsys.readouterr()
    assert link.is_symlink() and real.is_file() and '"perplexity"' in real.read_text()
    first = real.read_text()
    assert main([str(a) for a in (*args, "--max-windows", "1", "--out", link)]) == 0
    assert link.is_symlink() and real.read_text() != first


def test_one_writer_through_two_links_to_one_folder(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "a").symlink_to(real)
    (tmp_path / "b").symlink_to(real)
    with (
        exclusive(tmp_path / "a"),
        pytest.raises(SvdadaptError, match="being written by another"),
        exclusive(tmp_path / "b"),
    ):
        pass


def test_run_resume_never_removes_a_folder_a_link_put_in_its_place_leads_to(capsys, tiny_dirs, tmp_path):
    out = tmp_path / "out"
    recipe = {"model": str(tiny_dirs["llama"]), "out": str(out), "device": "cpu",
              "build": {"method": "pissa", "rank": 4}}  # fmt: skip
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 0
    capsys.readouterr()
    mine = shutil.copytree(out / "run", tmp_path / "my-own-run")  # the user's own run, elsewhere
    shutil.rmtree(out / "run")
    (out / "run").symlink_to(mine)
    before = tree(mine)
    err = refused(capsys, "run", path, "--resume", "build.rank=2")
    assert "not what this pipeline created" in err
    assert tree(mine) == before and (out / "run").is_symlink()
