"""Faults of a launch (`torchrun`, two gloo CPU processes): more processes than batches, a process
killed in the middle of a calibration or a build, and a resume with another number of processes.

Every launch ends within its timeout (collectives wait SVDADAPT_PROCESS_TIMEOUT seconds at most); a
surviving process says one `svdadapt: error:` line and shows no traceback of svdadapt's; what is
left never reads as complete; `--resume`, with one process or two, writes the store an
uninterrupted run writes (to float32 rounding: block sums are added in another order, see
tests/launch/test_calibrate.py).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from svdadapt import CovarianceStore
from svdadapt.backend import processes, signals
from svdadapt.cli import main
from svdadapt.errors import SvdadaptError
from svdadapt.runs import Run

from ..helpers import LAUNCH_ENV, calibrate_args

ENV = {**LAUNCH_ENV, "SVDADAPT_PROCESS_TIMEOUT": "30"}
TIMEOUT = 150  # seconds a launch may take at most (about 12 on two busy cores)

# svdadapt's command line, except that the process of rank DIE_RANK kills itself (SIGKILL), or with
# DIE_HOW=hang sleeps, as its block-wise calibration starts block DIE_BLOCK (the blocks before it are
# summed and written); with DIE_CHECKPOINT, once a whole-model pass has saved its first checkpoint;
# with SLOW_WRITE=S, rank 0 takes S seconds more to write a build's run (a very large base)
DRIVER = """
import importlib, os, signal, time
from svdadapt.calibrate import blockwise
from svdadapt.calibrate.partial import PartialRun
from svdadapt.cli import console
building = importlib.import_module("svdadapt.commands.build")  # the module, not the function

write_run_files = building.write_run_files


def slow(*args, **kwargs):
    time.sleep(float(os.environ.get("SLOW_WRITE", "0")))
    return write_run_files(*args, **kwargs)


building.write_run_files = slow

original = blockwise._block_sums


def dying(stream, index, *args, **kwargs):
    if os.environ.get("RANK", "0") == os.environ["DIE_RANK"] and index == int(os.environ["DIE_BLOCK"]):
        if os.environ.get("DIE_HOW") == "hang":
            time.sleep(600)
        os.kill(os.getpid(), signal.SIGKILL)
    return original(stream, index, *args, **kwargs)


def checkpointed(self, state):
    saved(self, state)
    if os.environ.get("DIE_CHECKPOINT"):  # a whole-model pass: die once its first checkpoint is written
        os.kill(os.getpid(), signal.SIGKILL)


blockwise._block_sums = dying
saved, PartialRun.save_full_state = PartialRun.save_full_state, checkpointed
console()
"""


def launch(*args, port: int, script=None, env=None) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2`` of svdadapt (or ``script``) with ``args``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
               *([str(script)] if script else ["-m", "svdadapt"]), *map(str, args)]  # fmt: skip
    return subprocess.run(command, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=TIMEOUT)


def error_lines(stderr: str) -> list[str]:
    """svdadapt's error lines; and no traceback through svdadapt's code (torchrun's own may be there)."""
    assert not re.search(r'File "[^"]*/svdadapt/', stderr), stderr[-4000:]
    lines = [part for line in stderr.splitlines() for part in line.split("\r")]
    return [line for line in lines if line.startswith("svdadapt: error:")]


@pytest.fixture(scope="module")
def reference(tiny_dirs, text_file, tmp_path_factory) -> CovarianceStore:
    """The store of an uninterrupted single-process calibration."""
    out = tmp_path_factory.mktemp("reference") / "store"
    assert main([str(a) for a in calibrate_args(tiny_dirs, text_file, out)]) == 0
    return CovarianceStore.load(out)


@pytest.fixture
def driver(tmp_path):
    path = tmp_path / "dying.py"
    path.write_text(DRIVER)
    return path


def assert_same_store(path, reference: CovarianceStore) -> None:
    store = CovarianceStore.load(path)
    store.verify()
    assert store.modules == reference.modules and store.num_tokens == reference.num_tokens
    for name in reference.modules:
        torch.testing.assert_close(store.covariance(name), reference.covariance(name), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(store.mean_abs(name), reference.mean_abs(name), rtol=1e-6, atol=1e-9)


def test_more_processes_than_batches_is_one_line_before_anything_is_written(tiny_dirs, text_file, tmp_path):
    few = ["--samples", "2", "--batch-size", "2"]  # one batch for two processes
    calibrate = calibrate_args(tiny_dirs, text_file, tmp_path / "store", *few)
    build = ["build", "--model", tiny_dirs["llama"], "--method", "corda-kpa", "--rank", "4", "--data", text_file,
             "--seq-len", "32", "--device", "cpu", "--out", tmp_path / "run", *few]  # fmt: skip
    for args, port in ((calibrate, 29541), (build, 29542)):
        proc = launch(*args, port=port)
        lines = error_lines(proc.stderr)
        assert proc.returncode != 0 and lines, proc.stderr[-3000:]
        shares = [line for line in lines if "2 processes were launched for 1 calibration batch" in line]
        assert shares and all(flag in shares[0] for flag in ("--samples", "--batch-size", "1 process")), lines
        assert all(line in shares or "the launcher stopped this process" in line for line in lines), lines
    assert list(tmp_path.iterdir()) == []  # no store, no run, no lock


def test_a_process_killed_mid_calibration_leaves_a_run_that_resumes_with_one_or_two(
    tiny_dirs, text_file, tmp_path, driver, reference
):
    killed = tmp_path / "killed"
    proc = launch(*calibrate_args(tiny_dirs, text_file, killed), port=29543, script=driver,
                  env={"DIE_RANK": "1", "DIE_BLOCK": "1"})  # fmt: skip
    lines = error_lines(proc.stderr)
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-3000:]  # rank 0's, rank 1 is gone
    assert "another process of the launch stopped" in lines[0] or "the launcher stopped" in lines[0], lines
    assert "--resume" in lines[0]
    with pytest.raises(SvdadaptError):
        CovarianceStore.load(killed)  # the interrupted run never reads as a store
    assert not list(killed.glob(".*.tmp")) and (killed / ".partial" / "units" / "00000.json").is_file()
    first = (killed / "covariances-00000.safetensors").stat().st_ino
    shutil.copytree(killed, tmp_path / "again")
    assert main([str(a) for a in calibrate_args(tiny_dirs, text_file, killed, "--resume")]) == 0
    assert (killed / "covariances-00000.safetensors").stat().st_ino == first  # block 0 was kept, not redone
    assert_same_store(killed, reference)
    proc = launch(*calibrate_args(tiny_dirs, text_file, tmp_path / "again", "--resume"), port=29544)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_store(tmp_path / "again", reference)


def test_a_single_process_run_resumes_under_two_processes(tiny_dirs, text_file, tmp_path, driver, reference):
    out = tmp_path / "store"
    args = [sys.executable, str(driver), *map(str, calibrate_args(tiny_dirs, text_file, out))]
    proc = subprocess.run(args, env={**ENV, "DIE_RANK": "0", "DIE_BLOCK": "1"}, capture_output=True, timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL and (out / ".partial" / "units" / "00000.json").is_file()
    proc = launch(*calibrate_args(tiny_dirs, text_file, out, "--resume"), port=29545)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_store(out, reference)


def test_a_whole_model_checkpoint_of_one_process_is_started_over_by_two(tiny_dirs, text_file, tmp_path, driver):
    args = calibrate_args(tiny_dirs, text_file, tmp_path / "store", "--mode", "full", "--checkpoint-seconds", "1e-6")
    assert main([str(a) for a in calibrate_args(tiny_dirs, text_file, tmp_path / "whole", "--mode", "full")]) == 0
    proc = subprocess.run([sys.executable, str(driver), *map(str, args)], env={**ENV, "DIE_CHECKPOINT": "1"},
                          capture_output=True, timeout=TIMEOUT)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL and (tmp_path / "store" / ".partial" / "full-state.safetensors").is_file()
    proc = launch(*args, "--resume", port=29548)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("start the whole-model pass over") == 1  # said once, by rank 0
    assert_same_store(tmp_path / "store", CovarianceStore.load(tmp_path / "whole"))


def test_a_process_killed_mid_build_leaves_no_run(tiny_dirs, text_file, tmp_path, driver):
    build = ["build", "--model", tiny_dirs["llama"], "--method", "corda-kpa", "--rank", "4", "--data", text_file,
             "--samples", "12", "--seq-len", "32", "--batch-size", "2", "--device", "cpu",
             "--out", tmp_path / "run"]  # fmt: skip
    proc = launch(*build, port=29546, script=driver, env={"DIE_RANK": "1", "DIE_BLOCK": "1"})
    lines = error_lines(proc.stderr)
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-3000:]
    assert "another process of the launch" in lines[0] or "the launcher stopped" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dying.py"]  # no run, no temporary, no lock


def test_a_process_that_hangs_is_given_up_after_the_timeout(tiny_dirs, text_file, tmp_path, driver):
    out = tmp_path / "store"
    env = {"DIE_RANK": "1", "DIE_BLOCK": "1", "DIE_HOW": "hang", processes.TIMEOUT_VARIABLE: "5"}
    proc = launch(*calibrate_args(tiny_dirs, text_file, out), port=29547, script=driver, env=env)
    lines = error_lines(proc.stderr)
    assert proc.returncode != 0 and len(lines) == 2, proc.stderr[-3000:]
    # rank 0 gives up waiting; torchrun then stops rank 1, whose SIGTERM is one line too
    assert any("does not answer (Timed out" in line for line in lines), lines
    assert any("the launcher stopped this process" in line for line in lines), lines
    with pytest.raises(SvdadaptError):
        CovarianceStore.load(out)


def test_the_others_wait_for_rank_0s_long_write_past_the_timeout(tiny_dirs, text_file, tmp_path, driver):
    """The hand-over after a build is patient: rank 0 writing for longer than SVDADAPT_PROCESS_TIMEOUT
    (a 70B base) is not a hung peer."""
    build = ["build", "--model", tiny_dirs["llama"], "--method", "corda-kpa", "--rank", "4", "--data", text_file,
             "--samples", "8", "--seq-len", "32", "--batch-size", "2", "--device", "cpu",
             "--out", tmp_path / "run"]  # fmt: skip
    env = {"DIE_RANK": "-1", "DIE_BLOCK": "0", "SLOW_WRITE": "8", processes.TIMEOUT_VARIABLE: "3"}
    proc = launch(*build, port=29549, script=driver, env=env)
    assert proc.returncode == 0 and not error_lines(proc.stderr), proc.stderr[-3000:]
    assert Run.open(tmp_path / "run").meta["stage"] == "built"


def test_sigterm_in_a_process_group_is_one_line_and_the_timeout_is_checked(monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SvdadaptError, match="the launcher stopped this process"), processes._stopped_by_launcher():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises as soon as the signal arrives
    assert signal.getsignal(signal.SIGTERM) == before
    with pytest.raises(SvdadaptError, match="^stopped by SIGTERM$"), signals.stop_on_sigterm("stopped by SIGTERM"):
        os.kill(os.getpid(), signal.SIGTERM)  # one process, no launcher: the CLI's guard, temporary files removed
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) == before
    with pytest.raises(SvdadaptError, match="peer lost"), signals.stop_on_sigterm("stopped by SIGTERM"):
        try:  # a collective lost its peer, then the launcher's SIGTERM arrives during the cleanup
            with processes._stopped_by_launcher():
                raise SvdadaptError("peer lost")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # ignored: the first reason is the one said
    assert signal.getsignal(signal.SIGTERM) == before
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv(processes.TIMEOUT_VARIABLE, bad)
        with pytest.raises(SvdadaptError, match=processes.TIMEOUT_VARIABLE):
            processes._timeout()
    monkeypatch.setenv(processes.TIMEOUT_VARIABLE, "2.5")
    assert processes._timeout().total_seconds() == 2.5
