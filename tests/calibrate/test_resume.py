"""Interrupted calibrations resume to exactly the covariances of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from svdadapt import CovarianceStore, SvdadaptError
from svdadapt.calibrate import capture
from svdadapt.commands import CalibrateOptions
from svdadapt.commands import calibrate as calibrate_command


def _opts(model_dir, text_file, out, **overrides):
    values = dict(
        model=str(model_dir), data=str(text_file), samples=12, seq_len=32, batch_size=2, out=str(out), device="cpu"
    )
    values.update(overrides)
    return CalibrateOptions.of(**values)


def calibrate(opts, progress=False):
    return calibrate_command(opts, progress=progress).store


def _assert_same(a: CovarianceStore, b: CovarianceStore):
    assert a.modules == b.modules
    assert a.num_tokens == b.num_tokens
    for name in a.modules:
        assert torch.equal(a.covariance(name), b.covariance(name)), name
        assert torch.equal(a.mean_abs(name), b.mean_abs(name)), name


class Interrupt(Exception):
    pass


def _interrupt_after(monkeypatch, calls: int):
    original = capture.InputCapture.end_batch
    count = {"n": 0}

    def end_batch(self):
        original(self)
        count["n"] += 1
        if count["n"] == calls:
            raise Interrupt

    monkeypatch.setattr(capture.InputCapture, "end_batch", end_batch)


@pytest.mark.parametrize("mode", ["full", "blockwise"])
def test_resume_after_interruption_is_identical(mode, tiny_dirs, text_file, tmp_path, monkeypatch):
    extra = {"mode": mode, "checkpoint_seconds": 1e-9}
    straight = calibrate(_opts(tiny_dirs["llama"], text_file, tmp_path / "a", **extra), progress=False)
    # blockwise: 6 batches per block, so 9 calls stop halfway through the second block
    _interrupt_after(monkeypatch, 4 if mode == "full" else 9)
    with pytest.raises(Interrupt):
        calibrate(_opts(tiny_dirs["llama"], text_file, tmp_path / "b", **extra), progress=False)
    monkeypatch.undo()
    assert not (tmp_path / "b" / "store.json").exists()
    if mode == "full":  # --checkpoint-seconds reached the pass: it saved its sums, the resume starts there
        assert (tmp_path / "b" / ".partial" / "full-state.safetensors").is_file()
    with pytest.raises(SvdadaptError, match="--resume"):
        calibrate(_opts(tiny_dirs["llama"], text_file, tmp_path / "b", **extra), progress=False)
    resumed = calibrate(_opts(tiny_dirs["llama"], text_file, tmp_path / "b", resume=True, **extra), progress=False)
    _assert_same(straight, resumed)
    assert not (tmp_path / "b" / ".partial").exists()


def test_resume_refuses_another_spec(tiny_dirs, text_file, tmp_path, monkeypatch):
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(Interrupt):
        calibrate(_opts(tiny_dirs["llama"], text_file, tmp_path / "b"), progress=False)
    monkeypatch.undo()
    with pytest.raises(SvdadaptError, match="another spec.*samples"):
        calibrate(_opts(tiny_dirs["llama"], text_file, tmp_path / "b", samples=10, resume=True), progress=False)
    with pytest.raises(SvdadaptError, match="another spec.*model_fingerprint"):
        calibrate(_opts(tiny_dirs["gpt2"], text_file, tmp_path / "b", resume=True), progress=False)
    edited = tmp_path / "edited.txt"  # the same options, the text edited: not continued as one calibration
    edited.write_text(text_file.read_text()[::-1])
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(Interrupt):
        calibrate(_opts(tiny_dirs["llama"], edited, tmp_path / "c"), progress=False)
    monkeypatch.undo()
    edited.write_text(text_file.read_text())
    with pytest.raises(SvdadaptError, match="another spec.*the samples' tokens differ"):
        calibrate(_opts(tiny_dirs["llama"], edited, tmp_path / "c", resume=True), progress=False)


def test_resume_of_a_complete_store_reuses_it(tiny_dirs, text_file, tmp_path):
    first = calibrate(_opts(tiny_dirs["bert"], text_file, tmp_path / "s"), progress=False)
    again = calibrate(_opts(tiny_dirs["bert"], text_file, tmp_path / "s", resume=True), progress=False)
    _assert_same(first, again)
    with pytest.raises(SvdadaptError, match="another spec"):
        calibrate(_opts(tiny_dirs["bert"], text_file, tmp_path / "s", seed=3, resume=True), progress=False)
    index = tmp_path / "s" / "store.json"  # a store from before the samples' digest was recorded
    meta = json.loads(index.read_text())
    del meta["spec"]["samples_digest"]
    index.write_text(json.dumps(meta))
    calibrate(_opts(tiny_dirs["bert"], text_file, tmp_path / "s", resume=True), progress=False)


def test_killed_process_resumes_to_identical_covariances(tiny_dirs, text_file, tmp_path):
    """SIGKILL a real `svdadapt calibrate` once it has written something, then --resume it."""
    args = [
        sys.executable, "-m", "svdadapt", "calibrate", "--model", str(tiny_dirs["llama"]), "--data", str(text_file),
        "--samples", "400", "--seq-len", "64", "--batch-size", "2", "--device", "cpu",
    ]  # fmt: skip
    out = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if list((out / ".partial" / "units").glob("*.json")):
            break
        time.sleep(0.05)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run([*args, "--out", str(out), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    straight = subprocess.run([*args, "--out", str(tmp_path / "straight")], capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr
    _assert_same(CovarianceStore.load(tmp_path / "straight"), CovarianceStore.load(out))
