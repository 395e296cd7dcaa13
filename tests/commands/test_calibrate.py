"""`svdadapt calibrate` as a user runs it: the happy path and every bad input of the issue."""

import json

import pytest

from svdadapt import CovarianceStore

from ..helpers import bad, run


def test_calibrate_writes_a_store_and_prints_a_summary(capsys, tiny_dirs, short_text_file, tmp_path):
    code, out, err = run(
        capsys, "calibrate", "--model", str(tiny_dirs["gpt2"]), "--data", str(short_text_file), "--samples", "4",
        "--seq-len", "16", "--batch-size", "3", "--out", str(tmp_path / "s"), "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert "8 in 8 covariance groups" in out
    store = CovarianceStore.load(tmp_path / "s")
    assert store.metadata["samples"] == 4 and store.num_tokens == 64
    assert store.metadata["source"]["data"] == str(short_text_file)


def _bad(capsys, tmp_path, *args):
    line = bad(capsys, "calibrate", *args)
    assert not list(tmp_path.rglob("store.json")), "a failed run must not leave a complete-looking store"
    return line


@pytest.fixture
def base(tiny_dirs, short_text_file, tmp_path):
    return ["--model", str(tiny_dirs["llama"]), "--data", str(short_text_file), "--samples", "2", "--seq-len", "16",
            "--device", "cpu"]  # fmt: skip


def _with(base, **changes):
    args = list(base)
    for flag, value in changes.items():
        flag = "--" + flag.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


def test_unknown_source(capsys, tmp_path, base):
    msg = _bad(capsys, tmp_path, *_with(base, data="no-such-source", out=str(tmp_path / "o")))
    assert "unknown data source" in msg


def test_missing_file(capsys, tmp_path, base):
    msg = _bad(capsys, tmp_path, *_with(base, data=str(tmp_path / "missing.txt"), out=str(tmp_path / "o")))
    assert "does not exist" in msg


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".json"])
def test_empty_file(capsys, tmp_path, base, suffix):
    empty = tmp_path / f"empty{suffix}"
    empty.write_text("")
    msg = _bad(capsys, tmp_path, *_with(base, data=str(empty), out=str(tmp_path / "o")))
    assert "empty" in msg


def test_model_directory_without_weights(capsys, tmp_path, base, tiny_dirs):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((tiny_dirs["llama"] / "config.json").read_text())
    msg = _bad(capsys, tmp_path, *_with(base, model=str(bare), out=str(tmp_path / "o")))
    assert "no weights" in msg


def test_model_directory_with_only_pickle_weights(capsys, tmp_path, base, tiny_dirs):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_dirs["llama"] / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    msg = _bad(capsys, tmp_path, *_with(base, model=str(pickled), out=str(tmp_path / "o")))
    assert "pickle" in msg


def test_missing_model_directory(capsys, tmp_path, base):
    msg = _bad(capsys, tmp_path, *_with(base, model=str(tmp_path / "nope"), out=str(tmp_path / "o")))
    assert "does not exist" in msg


def test_targets_matching_nothing(capsys, tmp_path, base):
    msg = _bad(capsys, tmp_path, *_with(base, targets="no_such_proj", out=str(tmp_path / "o")))
    assert "match no linear layer" in msg and "q_proj" in msg


def test_seq_len_beyond_the_model_limit(capsys, tmp_path, base):
    msg = _bad(capsys, tmp_path, *_with(base, seq_len="100000", out=str(tmp_path / "o")))
    assert "beyond this model's limit of 256" in msg


@pytest.mark.parametrize("flag", ["samples", "seq_len", "batch_size", "checkpoint_seconds"])
def test_non_positive_numbers(capsys, tmp_path, base, flag):
    msg = _bad(capsys, tmp_path, *_with(base, **{flag: "0"}, out=str(tmp_path / "o")))
    assert "must be positive" in msg


def test_existing_non_store_directory_as_out(capsys, tmp_path, base):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    msg = _bad(capsys, tmp_path, *_with(base, out=str(foreign)))
    assert "is not a covariance store" in msg
    assert (foreign / "notes.txt").read_text() == "mine"


def test_existing_store_is_not_overwritten(capsys, tmp_path, base):
    assert run(capsys, "calibrate", *_with(base, out=str(tmp_path / "s")))[0] == 0
    code, _, err = run(capsys, "calibrate", *_with(base, out=str(tmp_path / "s")))
    assert code == 2 and "already holds a covariance store" in err


def test_unreachable_hub_for_a_model(capsys, tmp_path, base, monkeypatch):
    monkeypatch.setattr("svdadapt.hub.hub_reachable", lambda timeout=3.0: False)
    msg = _bad(capsys, tmp_path, *_with(base, model="someone/some-model", out=str(tmp_path / "o")))
    assert "cannot reach the Hugging Face hub" in msg


def test_unreachable_hub_for_a_dataset(capsys, tmp_path, base, monkeypatch):
    monkeypatch.setattr("svdadapt.hub.hub_reachable", lambda timeout=3.0: False)
    msg = _bad(capsys, tmp_path, *_with(base, data="nqopen", out=str(tmp_path / "o")))
    assert "cannot reach the Hugging Face hub" in msg and "nqopen:FILE" in msg


def test_hub_probe_really_fails_fast_on_this_offline_machine(capsys, tmp_path, base):
    """No monkeypatching: the real probe decides (offline here: it must not hang)."""
    from svdadapt.hub import hub_reachable

    if hub_reachable():
        pytest.skip("the hub is reachable from this machine")
    msg = _bad(capsys, tmp_path, *_with(base, data="metamath", out=str(tmp_path / "o")))
    assert "cannot reach the Hugging Face hub" in msg


def test_metadata_records_the_spec(capsys, tmp_path, base):
    assert run(capsys, "calibrate", *_with(base, out=str(tmp_path / "s")))[0] == 0
    meta = json.loads((tmp_path / "s" / "store.json").read_text())
    assert meta["spec"]["samples"] == 2 and meta["spec"]["seq_len"] == 16
    assert meta["samples"] == 2 and meta["seq_len"] == 16
    assert meta["dtype"] == "float32" and meta["accumulate_dtype"] == "float64"
    assert len(meta["model"]["fingerprint"]) == 64
