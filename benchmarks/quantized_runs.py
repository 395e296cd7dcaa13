"""What merge and export --against-original mean on a 4-bit run, measured: a run built with
``--quantize nf4`` against the same run on its float base (at init, where the float run is the
original model), its merged float model, and its export against the original (the best rank-2r
LoRA of W_q + s·B·A − W).

For each method (default: lora = QLoRA, pissa = QPiSSA; add corda-kpa with calibration) a run is
built on the float base and on an nf4 base; figures on ``--windows`` held-out windows of bundled
wiki text (not the calibration's): the logits' relative distance ‖z − z_float‖/‖z_float‖ of the
4-bit run, of its merged model, and of the export loaded in stock PEFT on the original; the export's
recorded per-layer error (mean over layers, relative to the run's weight and to D); perplexity of
each.

    python benchmarks/quantized_runs.py [--model default] [--methods lora,pissa] [--rank 16]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECTIONS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"


def svdadapt(*args) -> str:
    done = subprocess.run([sys.executable, "-m", "svdadapt", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"svdadapt {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def windows(tokenizer, count: int, seq_len: int):
    """``count`` windows of bundled wiki text (seed 7: not the calibration's samples), (count, L)."""
    import torch

    from svdadapt.data import make_samples, resolve

    samples = make_samples(resolve("wiki"), tokenizer, count, seq_len, seed=7)
    return torch.tensor([s.input_ids[:seq_len] for s in samples])


def outputs(model, ids):
    """Logits (n, L, V) and perplexity on ``ids``."""
    import torch

    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    return out.logits, math.exp(float(out.loss))


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--methods", default="lora,pissa")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from machine import describe, line
    from svdadapt.models import load_model, resolve_location
    from svdadapt.runs import Run

    location = resolve_location(args.model)
    original = load_model(location, head="causal-lm")
    ids = windows(original.tokenizer, args.windows, args.seq_len)
    reference, reference_ppl = outputs(original.model, ids)
    del original
    figures: dict[str, dict] = {"original": {"perplexity": reference_ppl}}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            common = ["--model", args.model, "--method", method, "--rank", args.rank, "--targets", PROJECTIONS,
                      "--device", "cpu"]  # fmt: skip
            if method.startswith(("corda", "cloq", "eva", "lora-null")):
                common += ["--data", "wiki", "--samples", "16", "--seq-len", "256", "--batch-size", "8"]
            start = time.perf_counter()
            svdadapt("build", *common, "--quantize", "nf4", "--out", Path(tmp) / method)
            build_s = time.perf_counter() - start
            run = Run.open(Path(tmp) / method)
            logits, ppl = outputs(run.load_adapted().model, ids)
            svdadapt("merge", run.path, "--out", Path(tmp) / f"{method}-merged")
            merged, _ = outputs(AutoModelForCausalLM.from_pretrained(Path(tmp) / f"{method}-merged"), ids)
            svdadapt("export", run.path, "--against-original", args.model, "--out", Path(tmp) / f"{method}-export")
            export_dir = Path(tmp) / f"{method}-export"
            record = json.loads((export_dir / "svdadapt_approximation.json").read_text())["layers"]
            exported = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(location), export_dir)
            export_logits, export_ppl = outputs(exported, ids)
            figures[f"{method} nf4"] = {
                "build_s": build_s,
                "mean_weight_error": run.quantization["mean_error"],
                "logits_vs_float": rel(logits, reference),
                "perplexity": ppl,
                "merged_vs_4bit_run": rel(merged, logits),
                "export_vs_4bit_run": rel(export_logits, logits),
                "export_vs_float": rel(export_logits, reference),
                "export_perplexity": export_ppl,
                "export_left_of_weight": sum(e["of_weight"] for e in record.values()) / len(record),
                "export_left_of_difference": sum(e["of_difference"] for e in record.values()) / len(record),
            }
    print(f"machine: {line()}")
    print(f"model {args.model}, r = {args.rank} on {PROJECTIONS}, nf4 block 64; {args.windows} × {args.seq_len} "
          f"held-out wiki tokens; original perplexity {reference_ppl:.2f}\n")  # fmt: skip
    print(f"{'run':12s} {'‖W−Ŵ‖/‖W‖':>10s} {'logits Δ':>9s} {'PPL':>7s} {'merged Δ':>9s} {'export Δ run':>12s} "
          f"{'export Δ float':>14s} {'export PPL':>10s} {'left of W':>9s} {'left of D':>9s}")  # fmt: skip
    for name, f in figures.items():
        if name == "original":
            continue
        print(f"{name:12s} {f['mean_weight_error']:10.4f} {f['logits_vs_float']:9.4f} {f['perplexity']:7.2f} "
              f"{f['merged_vs_4bit_run']:9.1e} {f['export_vs_4bit_run']:12.4f} {f['export_vs_float']:14.4f} "
              f"{f['export_perplexity']:10.2f} {f['export_left_of_weight']:9.4f} "
              f"{f['export_left_of_difference']:9.3f}")  # fmt: skip
    if args.json:
        payload = {"machine": describe(), "settings": vars(args), "figures": figures}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
