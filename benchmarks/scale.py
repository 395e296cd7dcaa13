"""Calibrate + build at scale: svdadapt against PEFT's preprocess_corda + get_peft_model on a
synthetic model of a real shape (benchmarks/synthetic.py), each contestant in its own process,
alternated.

CPU (default): a ~1.1B Llama shape (22 blocks, hidden 2048, intermediate 5632, 32k vocabulary,
float32), corda-kpa r = 16 on all 7 projections, calibrating on 16 × 512 tokens of bundled wiki.
Targets: svdadapt's peak RSS ≤ 0.25× PEFT's and ≤ 0.5× the model's float32 size; wall time ≤ 0.5×
PEFT's. Also the same build with 2 processes under torchrun (figures only).

GPU (``--gpu``): the Llama-2-7B shape (32 blocks, hidden 4096, intermediate 11008, bf16 weights),
256 × 2048 calibration tokens as the CorDA seed used (``--samples``/``--seq-len`` cut them if the
run must be shorter), r = 128; svdadapt against PEFT on the same GPU (wall time, peak GPU memory by
``torch.cuda.max_memory_allocated``, peak host RSS), and svdadapt again with the GPU capped to
8 GiB (``torch.cuda.set_per_process_memory_fraction``). Targets: peak GPU memory ≤ 0.25× PEFT's,
wall time ≤ 0.33× PEFT's; the capped build completes.

    python benchmarks/scale.py [--repeats 1] [--json docs/scale-bench.json] [--peft-from EARLIER.json]
    python benchmarks/scale.py --gpu --json docs/scale-gpu-bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from processes import run_process

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SETUPS = {
    "cpu": dict(shape="llama-1.1b", dtype="float32", samples=16, seq_len=512, rank=16, batch_size=8, device="cpu"),
    "gpu": dict(shape="llama-7b", dtype="bfloat16", samples=256, seq_len=2048, rank=128, batch_size=8, device="cuda"),
}


def build_args(setup: dict, model: str, out: str) -> list[str]:
    return [
        "build", "--model", model, "--method", "corda-kpa", "--rank", str(setup["rank"]), "--data", "wiki",
        "--samples", str(setup["samples"]), "--seq-len", str(setup["seq_len"]), "--batch-size",
        str(setup["batch_size"]), "--targets", ",".join(PROJECTIONS), "--device", setup["device"], "--out", out,
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------ children
def child_svdadapt(setup: dict, model: str, out: str, cap_gib: float | None = None) -> dict:
    """`svdadapt build` in this process (the CLI's own function), with the GPU's peak memory."""
    import torch

    from svdadapt.cli import main

    if cap_gib is not None:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(cap_gib * 2**30 / total, 1.0))
    start = time.perf_counter()
    status = main(build_args(setup, model, out))
    if status != 0:
        raise SystemExit(status)
    return {"timed_s": time.perf_counter() - start, **_gpu_peak()}


def child_peft(setup: dict, model: str) -> dict:
    """PEFT 0.21's CorDA (kpm) on the same model and tokens: preprocess_corda + get_peft_model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import preprocess_corda
    from transformers import AutoModelForCausalLM

    from svdadapt.data import make_samples, resolve
    from svdadapt.models import load_tokenizer

    device = setup["device"]
    dtype = torch.float32 if device == "cpu" else getattr(torch, setup["dtype"])
    loaded = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device).eval()
    tokenizer = load_tokenizer(model)
    samples = make_samples(resolve("wiki"), tokenizer, setup["samples"], setup["seq_len"], seed=0)
    ids = [torch.tensor(s.input_ids, device=device)[None] for s in samples]
    config = LoraConfig(
        r=setup["rank"], target_modules=PROJECTIONS, init_lora_weights="corda",
        corda_config=CordaConfig(corda_method="kpm"),
    )  # fmt: skip

    def run_model():  # PEFT's hook squeezes dim 0: batch size 1 only
        for row in ids:
            loaded(input_ids=row)

    start = time.perf_counter()
    with torch.no_grad():
        preprocess_corda(loaded, config, run_model=run_model)
    get_peft_model(loaded, config)
    return {"timed_s": time.perf_counter() - start, **_gpu_peak()}


def _gpu_peak() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30}


CHILDREN = {"svdadapt": child_svdadapt, "peft": child_peft}


# ------------------------------------------------------------------------------------------ parent
def run_child(name: str, **kwargs) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--kwargs", json.dumps(kwargs)]
    out, wall, rss = run_process(cmd)
    return {**json.loads(out.strip().splitlines()[-1]), "wall_s": wall, "peak_rss_gib": rss}


def run_cli(setup: dict, model: str, out: str) -> dict:
    """`python -m svdadapt build` exactly as a user runs it (CPU); its timed section is build_seconds."""
    shutil.rmtree(out, ignore_errors=True)
    _, wall, rss = run_process([sys.executable, "-m", "svdadapt", *build_args(setup, model, out)])
    timed = json.loads((Path(out) / "run.json").read_text())["build_seconds"]
    return {"timed_s": timed, "wall_s": wall, "peak_rss_gib": rss}


def run_torchrun(setup: dict, model: str, out: str, processes: int = 2) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {"OMP_NUM_THREADS": str(max((os.cpu_count() or 2) // processes, 1))}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "-m", "svdadapt"]
    _, wall, rss = run_process([*launch, *build_args(setup, model, out)], env)
    timed = json.loads((Path(out) / "run.json").read_text())["build_seconds"]
    return {"timed_s": timed, "wall_s": wall, "peak_rss_gib": rss}


def synthetic_model(setup: dict, where: Path | None) -> Path:
    from svdadapt.assets import svdadapt_home
    from synthetic import write_model

    path = where or svdadapt_home() / "synthetic" / f"{setup['shape']}-{setup['dtype']}"
    if not (path / "config.json").is_file():
        print(f"writing a synthetic {setup['shape']} ({setup['dtype']}) to {path}", flush=True)
        write_model(setup["shape"], path, setup["dtype"])
    return path


def median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--kwargs", default="{}")
    parser.add_argument("--gpu", action="store_true", help="the Llama-2-7B shape on the GPU")
    parser.add_argument("--model", type=Path, help="the synthetic model's directory (made there if absent)")
    parser.add_argument("--samples", type=int, help="calibration samples (default: the setup's)")
    parser.add_argument("--seq-len", type=int, help="tokens per sample (default: the setup's)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-torchrun", action="store_true", help="CPU: skip the 2-process build")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--peft-from", help="take PEFT's figures from this earlier --json of the same setup instead of rerunning it"
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](**json.loads(args.kwargs))))
        return

    from machine import describe, line
    from synthetic import parameters

    setup = dict(SETUPS["gpu" if args.gpu else "cpu"])
    setup.update({k: v for k, v in (("samples", args.samples), ("seq_len", args.seq_len)) if v})
    model = str(synthetic_model(setup, args.model))
    float32_gib = parameters(setup["shape"]) * 4 / 2**30
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "run")
        for _ in range(args.repeats):  # alternated: the machine's drift hits both alike
            if args.gpu:
                runs.setdefault("svdadapt build", []).append(run_child("svdadapt", setup=setup, model=model, out=out))
                shutil.rmtree(out, ignore_errors=True)
            else:
                runs.setdefault("svdadapt build (CLI process)", []).append(run_cli(setup, model, out))
            if not args.peft_from:
                runs.setdefault("PEFT preprocess_corda + get_peft_model", []).append(
                    run_child("peft", setup=setup, model=model)
                )
        if args.gpu:
            capped = run_child("svdadapt", setup=setup, model=model, out=out, cap_gib=8.0)
            runs["svdadapt build, GPU capped to 8 GiB"] = [capped]
        elif not args.no_torchrun:
            runs["svdadapt build, 2 processes (torchrun)"] = [run_torchrun(setup, model, out)]
    figures = {name: median(r) for name, r in runs.items()}
    if args.peft_from:  # PEFT's earlier figures (it takes ~30 min on the CPU setup)
        earlier = json.loads(Path(args.peft_from).read_text())
        if earlier["setup"] != setup:
            raise SystemExit(f"{args.peft_from} measured another setup: {earlier['setup']}")
        figures["PEFT preprocess_corda + get_peft_model"] = earlier["runs"]["PEFT preprocess_corda + get_peft_model"]
    ours = figures["svdadapt build" if args.gpu else "svdadapt build (CLI process)"]
    peft = figures["PEFT preprocess_corda + get_peft_model"]
    ratios = {
        "svdadapt / PEFT, wall": ours["wall_s"] / peft["wall_s"],
        "svdadapt / PEFT, peak RSS": ours["peak_rss_gib"] / peft["peak_rss_gib"],
        "svdadapt peak RSS / model's float32 size": ours["peak_rss_gib"] / float32_gib,
    }
    if args.gpu:
        ratios["svdadapt / PEFT, peak GPU memory"] = ours["peak_gpu_gib"] / peft["peak_gpu_gib"]
    print(f"machine: {line()}; median of {args.repeats}")
    print(
        f"{setup['shape']} ({parameters(setup['shape']) / 1e9:.2f} B parameters, float32 size {float32_gib:.1f} GiB, "
        f"{setup['dtype']} on disk), {setup['samples']} x {setup['seq_len']} tokens, corda-kpa r = {setup['rank']}\n"
    )
    print(f"{'contestant':48s} {'timed s':>8s} {'wall s':>8s} {'peak RSS GiB':>12s} {'peak GPU GiB':>12s}")
    for name, r in figures.items():
        gpu = f"{r['peak_gpu_gib']:12.2f}" if "peak_gpu_gib" in r else f"{'':12s}"
        print(f"{name:48s} {r['timed_s']:8.1f} {r['wall_s']:8.1f} {r['peak_rss_gib']:12.2f} {gpu}")
    print()
    for name, value in ratios.items():
        print(f"{name:48s} {value:6.2f}")
    if args.json:
        payload = {"machine": describe(), "setup": setup, "float32_gib": float32_gib, "runs": figures, "ratios": ratios,
                   "peft_from": args.peft_from}  # fmt: skip
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
