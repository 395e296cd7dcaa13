"""What the safety suites damage copies of: one covariance store and one pissa run of the tiny Llama."""

from __future__ import annotations

import pytest

from svdadapt.cli import main


@pytest.fixture(scope="session")
def made(tiny_dirs, text_file, tmp_path_factory):
    """A covariance store and a pissa run of the tiny Llama, made once; tests damage copies, never these."""
    root = tmp_path_factory.mktemp("made")
    model = tiny_dirs["llama"]
    calibrate = ["calibrate", "--model", model, "--data", text_file, "--samples", "8", "--seq-len", "32",
                 "--batch-size", "4", "--device", "cpu", "--out", root / "store"]  # fmt: skip
    assert main([str(a) for a in calibrate]) == 0
    build = ["build", "--model", model, "--method", "pissa", "--rank", "4", "--device", "cpu", "--out", root / "run"]
    assert main([str(a) for a in build]) == 0
    return {"model": model, "store": root / "store", "run": root / "run", "text": text_file}
