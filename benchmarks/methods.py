"""KaSA vs LoRA vs PiSSA vs MiLoRA at equal rank and steps, over seeds, and KaSA's training-step cost.

Bundled polarity sentences (160 train / 40 validation) with the embedded all-MiniLM-L6-v2 encoder and
a new classification head; rank 8, alpha 16, the same optimiser settings for every method. Each
(method, seed) trains in-process through `svdadapt.train.train`; the script prints the validation
accuracy (best epoch and last epoch) as mean ± standard deviation over seeds, and the median
seconds per optimizer step of each method (forward, backward, update; evaluation excluded), on the
same machine in the same run.

    python benchmarks/methods.py [--seeds 0,1,2] [--epochs 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

METHODS = ("lora", "kasa", "pissa", "milora")


def train_one(method: str, seed: int, epochs: float, out: Path, beta: float, gamma: float) -> dict:
    from svdadapt.commands import TrainOptions, train
    from svdadapt.methods import get_method

    weights = {"beta": beta, "gamma": gamma} if get_method(method).loss == "kasa" else {}
    opts = TrainOptions.of(
        model="default-encoder", method=method, rank=8, alpha=16.0, task="polarity", out=str(out / f"{method}-{seed}"),
        epochs=epochs, batch_size=16, max_length=64, module_lr=1e-3, head_lr=3e-3, warmup_ratio=0.06,
        schedule="linear", seed=seed, device="cpu", logging_steps=10, **weights,
    )  # fmt: skip
    results = train(opts, progress=False).results
    return {
        "best": results["best"]["accuracy"],
        "last": results["history"][-1]["accuracy"],
        "seconds_per_step": results["step_seconds_median"],
    }


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--beta", type=float, default=1e-4, help="KaSA β (the seed's CoLA/SST-2 value)")
    parser.add_argument("--gamma", type=float, default=1e-3, help="KaSA γ (the seed's CoLA/SST-2 value)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:  # interleave methods so machine noise hits all of them alike
            for method in METHODS:
                result = train_one(method, seed, args.epochs, Path(tmp), args.beta, args.gamma)
                rows.setdefault(method, []).append(result)
    print(f"polarity (160/40), all-MiniLM-L6-v2 + new head, r=8 α=16, {args.epochs:g} epochs, seeds {args.seeds}\n")
    print(f"{'method':8s} {'best-epoch accuracy':>22s} {'last-epoch accuracy':>22s} {'s/step':>8s}")
    for method, runs in rows.items():
        step = statistics.median(r["seconds_per_step"] for r in runs)
        print(
            f"{method:8s} {mean_std([r['best'] for r in runs]):>22s} {mean_std([r['last'] for r in runs]):>22s} "
            f"{step:8.3f}"
        )
    lora = statistics.median(r["seconds_per_step"] for r in rows["lora"])
    kasa = statistics.median(r["seconds_per_step"] for r in rows["kasa"])
    print(f"\nKaSA step time / LoRA step time: {kasa / lora:.3f} (target <= 1.1)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "kasa_over_lora": kasa / lora}, indent=2))


if __name__ == "__main__":
    main()
