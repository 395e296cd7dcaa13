"""What machine a benchmark ran on: CPU model, cores, instruction set, torch, and the back end's choices."""

from __future__ import annotations

import os
import platform


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> dict:
    import torch

    from svdadapt.backend import onednn

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "onednn_float32_products": onednn.onednn_preferred(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def line() -> str:
    m = describe()
    route = "oneDNN" if m["onednn_float32_products"] else "torch's BLAS"
    return f"{m['cpu']}, {m['cores']} cores, {m['isa']}, float32 products on {route}, torch {m['torch']}"
