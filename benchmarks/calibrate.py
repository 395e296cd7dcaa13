"""Calibration cost: svdadapt vs PEFT's CorDA hook pass vs the bare forward, and the floor.

Embedded SmolLM2-135M-Instruct, 16 samples x 256 tokens of bundled wiki (identical token ids for
every contestant), all 7 projections of all 30 blocks, CPU. Each contestant runs in its own
process; the parent reads each child's wall time and peak RSS (os.wait4) and the time of the
timed section the child reports. The floor is the bare forward time plus the covariance FLOPs
(2 * tokens * sum over unique layer inputs of d_in^2) at the float32 GEMM rate measured here, with
torch's own kernels; the strict floor takes the fastest forward and GEMM rate, oneDNN's included
(which svdadapt uses for float32 products where torch's BLAS is slower, see svdadapt.backend.onednn).

    python benchmarks/calibrate.py            # prints a table; --json FILE also writes the figures
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLES, SEQ_LEN, SEED = 16, 256, 0
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------------------- children
def _load(tokens_file: str):
    import torch
    from safetensors.torch import load_file

    from svdadapt.models import load_model

    torch.manual_seed(0)
    loaded = load_model("default")
    ids = load_file(tokens_file)["input_ids"]  # (SAMPLES, SEQ_LEN)
    return loaded.model, ids


def child_svdadapt(tokens_file: str, mode: str, batch_size: int, dtype: str) -> dict:
    import torch

    from svdadapt import collect_covariances

    model, ids = _load(tokens_file)
    batches = [
        {"input_ids": ids[i : i + batch_size], "attention_mask": torch.ones_like(ids[i : i + batch_size])}
        for i in range(0, len(ids), batch_size)
    ]
    start = time.perf_counter()
    store = collect_covariances(model, batches, PROJECTIONS, getattr(torch, dtype), mode=mode)
    seconds = time.perf_counter() - start
    assert len(store.modules) == 210
    return {"timed_s": seconds}


def cli_command(out: str) -> list[str]:
    """`svdadapt calibrate` exactly as a user runs it, in a process of its own: same wiki windows,
    block shards written to disk."""
    return [
        sys.executable, "-m", "svdadapt", "calibrate", "--model", "default", "--data", "wiki",
        "--samples", str(SAMPLES), "--seq-len", str(SEQ_LEN), "--seed", str(SEED),
        "--targets", ",".join(PROJECTIONS), "--device", "cpu", "--out", out,
    ]  # fmt: skip


def child_forward(tokens_file: str, batch_size: int, body_only: bool, onednn: bool = False) -> dict:
    """The bare forward passes; ``onednn``: with svdadapt's float32 products (as its calibration)."""
    import contextlib

    import torch

    from svdadapt import backend

    model, ids = _load(tokens_file)
    runner = model.model if body_only else model
    start = time.perf_counter()
    with torch.no_grad(), backend.on("cpu").forward_products() if onednn else contextlib.nullcontext():
        for i in range(0, len(ids), batch_size):
            runner(input_ids=ids[i : i + batch_size], use_cache=False)
    return {"timed_s": time.perf_counter() - start}


def child_peft(tokens_file: str) -> dict:
    import torch
    from peft import LoraConfig
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import calib_cov_distribution

    model, ids = _load(tokens_file)
    config = LoraConfig(
        r=16, target_modules=PROJECTIONS, init_lora_weights="corda", corda_config=CordaConfig(corda_method="kpm")
    )

    def run_model():  # PEFT's hook squeezes dim 0: batch size 1 only
        for row in ids:
            model(input_ids=row[None])

    start = time.perf_counter()
    with torch.no_grad():
        calib_cov_distribution(model, config, run_model, None, None)
    return {"timed_s": time.perf_counter() - start}


def child_gemm() -> dict:
    """float32 x^T x rate at this model's shapes over 2048-token batches (a full GEMM, no tricks),
    with torch's own BLAS and with oneDNN (what svdadapt uses where it prefers it)."""
    import torch

    from svdadapt.backend.onednn import _product, _works

    products = {"torch": lambda x, xT, acc: acc.addmm_(x.T, x)}
    if _works():  # oneDNN itself, whatever svdadapt would choose on this machine
        products["onednn"] = lambda x, xT, acc: acc.add_(_product(xT, xT))
    report = {}
    for label, product in products.items():
        rates = []
        for dim in (576, 1536):
            x = torch.randn(2048, dim)
            xT, acc = x.T.contiguous(), torch.zeros(dim, dim)
            for _ in range(3):
                product(x, xT, acc)
            reps = 20
            start = time.perf_counter()
            for _ in range(reps):
                product(x, xT, acc)
            rates.append(2 * 2048 * dim * dim * reps / (time.perf_counter() - start))
        report[label] = sum(rates) / len(rates)
    return {"rate": report["torch"], "best_rate": max(report.values()), "rates": report}


CHILDREN = {
    "svdadapt": child_svdadapt,
    "forward": child_forward,
    "peft": child_peft,
    "gemm": child_gemm,
}


# ---------------------------------------------------------------------------- parent
def run_child(name: str, **kwargs) -> dict:
    """Run one contestant in a fresh process; returns its report plus wall time and peak RSS."""
    if name == "cli":  # the CLI's timed section: from its start to the store's last shard
        import shutil

        shutil.rmtree(kwargs["out"], ignore_errors=True)  # a fresh store each repeat
        cmd = cli_command(kwargs["out"])
    else:
        cmd = [sys.executable, __file__, "--child", name, "--kwargs", json.dumps(kwargs)]
    environment = {k: v for k, v in os.environ.items() if k != "SVDADAPT_ONEDNN"}  # svdadapt's own choice
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environment)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"child {name} {kwargs} failed with status {status}")
    report = {"timed_s": _cli_seconds(kwargs["out"])} if name == "cli" else json.loads(out.strip().splitlines()[-1])
    report.update(wall_s=wall, peak_rss_gib=usage.ru_maxrss / 2**20)  # ru_maxrss is KiB on Linux
    return report


def _cli_seconds(store: str) -> float:
    return json.loads((Path(store) / "store.json").read_text())["seconds"]


def repeated(name: str, repeats: int, **kwargs) -> dict:
    """Run a contestant ``repeats`` times; keep the median of each figure (noisy shared machine)."""
    import statistics

    runs = [run_child(name, **kwargs) for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in ("timed_s", "wall_s", "peak_rss_gib")}


def prepare_tokens(path: Path) -> int:
    from safetensors.torch import save_file

    from svdadapt.data import make_samples, resolve
    from svdadapt.models import load_tokenizer, resolve_location

    tokenizer = load_tokenizer(resolve_location("default"))
    samples = make_samples(resolve("wiki"), tokenizer, SAMPLES, SEQ_LEN, seed=SEED)
    import torch

    ids = torch.tensor([s.input_ids for s in samples])
    save_file({"input_ids": ids}, str(path))
    return int(ids.numel())


def covariance_flops(tokens: int) -> float:
    hidden, intermediate, layers = 576, 1536, 30
    unique_inputs = [hidden, hidden, hidden, intermediate]  # q/k/v, o, gate/up, down
    return 2.0 * tokens * layers * sum(d * d for d in unique_inputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--kwargs", default="{}")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--repeats", type=int, default=3, help="runs per contestant (median reported)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](**json.loads(args.kwargs))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tokens_file = str(Path(tmp) / "tokens.safetensors")
        tokens = prepare_tokens(Path(tokens_file))
        runs = {
            "svdadapt (blockwise, batch 8, float64 sums)": repeated(
                "svdadapt", args.repeats, tokens_file=tokens_file, mode="blockwise", batch_size=8, dtype="float64"
            ),
            "svdadapt (full pass, batch 8, float64 sums)": repeated(
                "svdadapt", args.repeats, tokens_file=tokens_file, mode="full", batch_size=8, dtype="float64"
            ),
            "svdadapt (blockwise, batch 1, float64 sums)": repeated(
                "svdadapt", args.repeats, tokens_file=tokens_file, mode="blockwise", batch_size=1, dtype="float64"
            ),
            "svdadapt calibrate CLI (loads data, writes the store)": repeated(
                "cli", args.repeats, out=str(Path(tmp) / "store")
            ),
            "PEFT calib_cov_distribution (batch 1)": repeated("peft", args.repeats, tokens_file=tokens_file),
            "bare forward (batch 1, with LM head, as PEFT runs it)": repeated(
                "forward", args.repeats, tokens_file=tokens_file, batch_size=1, body_only=False
            ),
            "bare forward (batch 8, body only)": repeated(
                "forward", args.repeats, tokens_file=tokens_file, batch_size=8, body_only=True
            ),
            "bare forward (batch 8, body only, svdadapt's float32 products)": repeated(
                "forward", args.repeats, tokens_file=tokens_file, batch_size=8, body_only=True, onednn=True
            ),
        }
        gemm = run_child("gemm")

    flops = covariance_flops(tokens)
    cov_time = flops / gemm["rate"]
    ours = runs["svdadapt (blockwise, batch 8, float64 sums)"]
    peft = runs["PEFT calib_cov_distribution (batch 1)"]
    forward_peft_style = runs["bare forward (batch 1, with LM head, as PEFT runs it)"]
    fastest_forward = min(r["timed_s"] for name, r in runs.items() if name.startswith("bare forward (batch 8"))
    floor = forward_peft_style["timed_s"] + cov_time
    strict_floor = fastest_forward + flops / gemm["best_rate"]  # the fastest kernels for both parts

    from machine import describe, line

    print(f"machine: {line()}; median of {args.repeats}")
    print(f"tokens: {SAMPLES} x {SEQ_LEN} = {tokens}; covariance FLOPs {flops / 1e9:.0f} GFLOP")
    rates = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in gemm["rates"].items())
    print(f"float32 GEMM rate (x^T x, 2048 tokens), GFLOP/s: {rates} -> {cov_time:.2f} s of GEMM at torch's")
    print()
    print(f"{'contestant':58s} {'timed s':>8s} {'process s':>9s} {'peak RSS GiB':>12s}")
    for name, r in runs.items():
        print(f"{name:58s} {r['timed_s']:8.2f} {r['wall_s']:9.2f} {r['peak_rss_gib']:12.2f}")
    print()
    print(f"floor = bare forward (batch 1, as PEFT) + covariance GEMM = {floor:.2f} s")
    print(f"strict floor = fastest bare forward (batch 8) + covariance GEMM at the best rate = {strict_floor:.2f} s")
    ratios = {
        "svdadapt / PEFT hook pass (target <= 0.5)": ours["timed_s"] / peft["timed_s"],
        "svdadapt / floor (target <= 1.25)": ours["timed_s"] / floor,
        "svdadapt / strict floor": ours["timed_s"] / strict_floor,
        "svdadapt peak RSS / PEFT peak RSS (target < 1)": ours["peak_rss_gib"] / peft["peak_rss_gib"],
    }
    for name, value in ratios.items():
        print(f"{name:52s} {value:6.2f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"machine": describe(), "runs": runs, "gemm": gemm, "flops": flops, "floor": floor, "ratios": ratios},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
