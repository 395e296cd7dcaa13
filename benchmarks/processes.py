"""Running a benchmark's contestant as its own process: stdout, wall seconds and peak RSS."""

from __future__ import annotations

import os
import subprocess
import time


def run_process(cmd: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """Run ``cmd`` (with ``env`` added to the environment); its stdout, wall seconds and peak RSS
    in GiB (os.wait4's ru_maxrss: the largest process it waited for)."""
    start = time.perf_counter()
    inherited = {k: v for k, v in os.environ.items() if k != "SVDADAPT_ONEDNN"}  # svdadapt's own choice
    environment = {**inherited, **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environment)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed with status {status}")
    return out, time.perf_counter() - start, usage.ru_maxrss / 2**20
