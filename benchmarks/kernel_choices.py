"""The measurements behind the back end's choices (svdadapt.backend), at SmolLM2's layer shapes.

- eigensolvers: LAPACK's MRRR for the r + 24 eigenpairs a rank-16 build asks for, against all
  eigenpairs by divide and conquer and by torch.linalg.eigh (float64, one thread, as each layer
  worker runs);
- the Gram route of the decompositions against LAPACK's SVD (all components, float64, one thread);
- triangular Gram products: block width 96 and 192 against the full product, float64 (the
  decompositions, one thread) and float32 (calibration: torch's kernels and oneDNN, all threads);
- the finiteness check: one min/max pass against isfinite().all().

    python benchmarks/kernel_choices.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHAPES = {"q_proj/o_proj": (576, 576), "gate_proj/up_proj": (1536, 576), "down_proj": (576, 1536)}


def best_ms(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def eigensolvers() -> dict:
    import scipy.linalg
    import torch

    from svdadapt.backend.lapack import eigh

    rows = {}
    for k in (576, 1536):
        A = torch.randn(k, k + 64, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
        G = A @ A.T
        rows[f"{k} x {k}"] = {
            "MRRR, 40 smallest": best_ms(lambda G=G: eigh(G, (0, 39))),
            "divide and conquer, all": best_ms(lambda G=G: scipy.linalg.eigh(G.numpy(), driver="evd")),
            "torch.linalg.eigh, all": best_ms(lambda G=G: torch.linalg.eigh(G)),
        }
    return rows


def decompositions() -> dict:
    import torch

    from svdadapt.decompose import plain_svd

    rows = {}
    for name, shape in SHAPES.items():
        W = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        rows[f"{name} {shape[0]} x {shape[1]}"] = {
            "Gram route, all components": best_ms(lambda W=W: plain_svd(W)),
            "torch.linalg.svd": best_ms(lambda W=W: torch.linalg.svd(W, full_matrices=False)),
        }
    return rows


def gram_widths() -> dict:
    import torch

    from svdadapt.backend import gram, onednn

    def triangular(X, width, rows=None):
        original = gram.GRAM_BLOCK
        gram.GRAM_BLOCK = width
        try:
            return gram.gram(X, rows)
        finally:
            gram.GRAM_BLOCK = original

    out = {}
    threads = torch.get_num_threads()
    for label, dtype, n, kernels in (
        ("float64, 1 thread (decompositions)", torch.float64, None, {"torch": None}),
        ("float32, all threads (calibration, 2048 tokens)", torch.float32, 2048,
         {"torch": None, **({"oneDNN": onednn.gram_rows} if onednn._works() else {})}),
    ):  # fmt: skip
        torch.set_num_threads(1 if dtype == torch.float64 else threads)
        for kernel, rows in kernels.items():
            for a, b in SHAPES.values():
                X = torch.randn(n or a, b, dtype=dtype, generator=torch.Generator().manual_seed(2))
                widths = {"width 96": 96, "width 192": 192, "full product": 10**9}
                out[f"{label}, {kernel}: X {X.shape[0]} x {b}"] = {
                    name: best_ms(lambda X=X, w=w, rows=rows: triangular(X, w, rows)) for name, w in widths.items()
                }
    torch.set_num_threads(threads)
    return out


def finiteness() -> dict:
    import torch

    from svdadapt.linalg import all_finite

    x = torch.randn(1536, 576)
    return {
        "1536 x 576 float32": {
            "min/max pass": best_ms(lambda: all_finite(x), 50),
            "isfinite().all()": best_ms(lambda: bool(torch.isfinite(x).all()), 50),
        }
    }


def main() -> None:
    import torch

    from machine import describe, line

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    figures = {"eigensolvers": eigensolvers(), "decompositions": decompositions()}
    torch.set_num_threads(threads)
    figures["triangular Gram products"] = gram_widths()
    figures["finiteness check"] = finiteness()
    print(f"machine: {line()}\n")
    for section, rows in figures.items():
        print(f"{section} (ms, best of 7)")
        for name, cells in rows.items():
            print(f"  {name:58s} " + "  ".join(f"{k} {v:8.2f}" for k, v in cells.items()))
        print()
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": describe(), **figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
