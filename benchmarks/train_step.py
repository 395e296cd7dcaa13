"""Seconds per optimizer step: svdadapt's adapters against PEFT's own LoRA layers on the same model,
batch, rank and targets.

For each svdadapt method (lora, corda-kpa, kasa) a run is built with the CLI (corda-kpa calibrates
on 16 × 256 tokens of bundled wiki) and loaded as training loads it (``Run.load_adapted``, the
adapters trainable); PEFT's contestant is ``get_peft_model(model, LoraConfig(r, targets))`` on the
original model. A step is what training does per batch: forward with labels, the method's
regularizer (KaSA's β‖ΔΣ‖² + γ orthogonality terms, as the trainer adds them), backward, AdamW
step, zero_grad. Each contestant runs in its own process, alternated with PEFT's; the figure is
the median step time after warm-up steps. Targets: ≤ 1.0× PEFT's LoRA step for lora and
corda-kpa, ≤ 1.1× for kasa.

    python benchmarks/train_step.py [--model default] [--steps 8] [--repeats 2] [--json FILE]
    python benchmarks/train_step.py --device cuda --model DIR_OF_A_7B_SHAPE --batch-size 4 --seq-len 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECTIONS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
METHODS = ("lora", "corda-kpa", "kasa")
TARGET = {"lora": 1.0, "corda-kpa": 1.0, "kasa": 1.1}


def batch(tokenizer, size: int, seq_len: int, device: str):
    """``size`` windows of bundled wiki text, ``seq_len`` tokens each, as input_ids = labels."""
    import torch

    from svdadapt.data import make_samples, resolve

    samples = make_samples(resolve("wiki"), tokenizer, size, seq_len, seed=1)
    ids = torch.tensor([s.input_ids[:seq_len] for s in samples], device=device)  # (b, L)
    return {"input_ids": ids, "labels": ids}


def time_steps(model, inputs: dict, steps: int, warmup: int, extra_loss=None) -> list[float]:
    """Wall seconds of each of ``steps`` optimizer steps after ``warmup`` untimed ones."""
    import torch

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    sync = torch.cuda.synchronize if inputs["input_ids"].is_cuda else (lambda: None)
    times = []
    for step in range(warmup + steps):
        sync()
        start = time.perf_counter()
        loss = model(**inputs).loss
        if extra_loss is not None:
            loss = loss + extra_loss(model)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def child_svdadapt(run: str, args: dict) -> dict:
    import torch

    from svdadapt.adapters.losses import LOSSES
    from svdadapt.runs import Run

    torch.manual_seed(0)
    opened = Run.open(run)
    loaded = opened.load_adapted(device=args["device"])
    method = opened.method
    regularizer = LOSSES[method.loss].regularizer(method.stage_values("train")) if method.loss else None
    inputs = batch(loaded.tokenizer, args["batch_size"], args["seq_len"], args["device"])
    trainable = sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)
    times = time_steps(loaded.model, inputs, args["steps"], args["warmup"], regularizer)
    return {"step_s": statistics.median(times), "trainable": trainable}


def child_peft(model: str, args: dict) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from svdadapt.models import load_model

    torch.manual_seed(0)
    loaded = load_model(model, head="causal-lm", device=args["device"])
    config = LoraConfig(r=args["rank"], lora_alpha=args["rank"], target_modules=PROJECTIONS.split(","))
    peft_model = get_peft_model(loaded.model, config)
    inputs = batch(loaded.tokenizer, args["batch_size"], args["seq_len"], args["device"])
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    times = time_steps(peft_model, inputs, args["steps"], args["warmup"])
    return {"step_s": statistics.median(times), "trainable": trainable}


def run_child(kind: str, target: str, args: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--target", target, "--kwargs", json.dumps(args)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def build_run(model: str, method: str, out: Path, args: dict) -> None:
    cmd = [sys.executable, "-m", "svdadapt", "build", "--model", model, "--method", method, "--rank", str(args["rank"]),
           "--targets", PROJECTIONS, "--device", args["device"], "--out", str(out)]  # fmt: skip
    if method == "corda-kpa":
        cmd += ["--data", "wiki", "--samples", "16", "--seq-len", "256", "--batch-size", "8"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--target")
    parser.add_argument("--kwargs", default="{}")
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternated rounds of every contestant")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.child:
        kwargs = json.loads(args.kwargs)
        child = child_svdadapt if args.child == "svdadapt" else child_peft
        print(json.dumps(child(args.target, kwargs)))
        return

    from machine import describe, line

    settings = {k: getattr(args, k) for k in ("device", "rank", "batch_size", "seq_len", "steps", "warmup")}
    steps: dict[str, list[float]] = {}
    trainable: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for method in METHODS:
            runs[method] = Path(tmp) / method
            build_run(args.model, method, runs[method], settings)
        for _ in range(args.repeats):  # alternated: the machine's drift hits every contestant alike
            for method in METHODS:
                result = run_child("svdadapt", str(runs[method]), settings)
                steps.setdefault(method, []).append(result["step_s"])
                trainable[method] = result["trainable"]
                peft = run_child("peft", args.model, settings)
                steps.setdefault("PEFT LoRA", []).append(peft["step_s"])
                trainable["PEFT LoRA"] = peft["trainable"]
    figures = {name: statistics.median(values) for name, values in steps.items()}
    peft = figures["PEFT LoRA"]
    print(f"machine: {line()}")
    print(f"model {args.model}, {args.device}, r = {args.rank} on {PROJECTIONS}, batch {args.batch_size} × "
          f"{args.seq_len} tokens; median of {args.steps} steps × {args.repeats} processes each\n")  # fmt: skip
    print(f"{'contestant':14s} {'s / step':>9s} {'vs PEFT':>8s} {'target':>7s} {'trainable':>10s}")
    for name, value in figures.items():
        target = f"≤ {TARGET[name]:.1f}" if name in TARGET else ""
        print(f"{name:14s} {value:9.3f} {value / peft:8.2f} {target:>7s} {trainable[name]:10,d}")
    if args.json:
        payload = {"machine": describe(), "settings": {**settings, "model": args.model, "repeats": args.repeats},
                   "step_s": figures, "all_step_s": steps, "ratio_to_peft": {k: v / peft for k, v in figures.items()},
                   "trainable": trainable}  # fmt: skip
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
