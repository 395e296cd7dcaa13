"""Calibration and builds under `torchrun` with two gloo CPU processes: each takes a share of the
batches (sums added across processes) and, in a build, of each block's layers; rank 0 alone writes.
The store and the run equal a single process's.

Tolerance: the processes sum disjoint halves of the batches in float64 and add the halves, a
different order of the same float64 sums: the stored float32 covariances agree to float32
rounding (rtol 1e-6). The adapters are decompositions of those covariances: agreement to 1e-5 of
each factor's largest entry (float32 storage, conditioning of the tiny model's context products).
"""

from __future__ import annotations

import subprocess
import sys

import torch

from svdadapt import CovarianceStore
from svdadapt.cli import main
from svdadapt.runs import Run

from ..helpers import LAUNCH_ENV, calibrate_args


def torchrun(*args, port: int) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
              "-m", "svdadapt", *map(str, args)]  # fmt: skip
    return subprocess.run(launch, env=LAUNCH_ENV, capture_output=True, text=True)


def test_two_processes_calibrate_the_store_one_process_does(tiny_dirs, text_file, tmp_path):
    assert main([str(a) for a in calibrate_args(tiny_dirs, text_file, tmp_path / "one")]) == 0
    proc = torchrun(*calibrate_args(tiny_dirs, text_file, tmp_path / "two"), port=29531)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = CovarianceStore.load(tmp_path / "one"), CovarianceStore.load(tmp_path / "two")
    assert one.modules == two.modules and one.num_tokens == two.num_tokens
    assert two.metadata["processes"] == 2
    for name in one.modules:
        torch.testing.assert_close(two.covariance(name), one.covariance(name), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(two.mean_abs(name), one.mean_abs(name), rtol=1e-6, atol=1e-9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no lock or temporary left


def test_two_processes_build_the_run_one_process_builds(tiny_dirs, text_file, tmp_path):
    args = ["build", "--model", tiny_dirs["llama"], "--method", "corda-kpa", "--rank", "4", "--data", text_file,
            "--samples", "12", "--seq-len", "32", "--batch-size", "2", "--device", "cpu"]  # fmt: skip
    assert main([str(a) for a in [*args, "--out", tmp_path / "one"]]) == 0
    proc = torchrun(*args, "--out", tmp_path / "two", port=29532)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run: ") == 1  # one summary per launch: rank 0 says what every process returned
    one, two = Run.open(tmp_path / "one"), Run.open(tmp_path / "two")
    a, b = one.adapters(), two.adapters()
    assert list(a.layers) == list(b.layers)
    for name, layer in a.layers.items():
        for field in ("A", "B", "base_P", "base_Q"):
            mine, theirs = getattr(layer, field), getattr(b.layers[name], field)
            assert (mine - theirs).abs().max() <= 1e-5 * mine.abs().max(), (name, field)
    # the residual base written by rank 0 for every layer, its own and the other process's
    base_one = one.load_base().model.state_dict()
    base_two = two.load_base().model.state_dict()
    for key, value in base_one.items():
        assert (value - base_two[key]).abs().max() <= 1e-5 * value.abs().max().clamp_min(1e-12), key
