"""Training memory on a 4-bit base: peak memory of a few training steps of a run whose base is NF4
(svdadapt ``build --quantize nf4``) against the same run on its float base, and against PEFT's own
QLoRA (``BitsAndBytesConfig(load_in_4bit)`` + ``get_peft_model``) on the original.

Each contestant runs in its own process: load (``Run.load_adapted``, as training loads it; PEFT:
quantize the original while loading), then ``--steps`` optimizer steps (forward with labels,
backward, AdamW) on ``--batch-size`` windows of bundled wiki text. On CPU the figures are the
process's resident memory after loading and its peak (``ru_maxrss``, loading included); on CUDA the
peak of ``torch.cuda.max_memory_allocated`` over the steps and, for the build contestants, over the
build itself (its own process).

    python benchmarks/quantized_memory.py [--model default] [--method pissa] [--steps 3]
    python benchmarks/quantized_memory.py --device cuda --model DIR_OF_A_7B_SHAPE --method corda-kpa \\
        --batch-size 4 --seq-len 512 --steps 5          # QCorDA against PEFT QLoRA, on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECTIONS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
GIB = 2**30


def batch(tokenizer, size: int, seq_len: int, device: str):
    """``size`` windows of bundled wiki text, ``seq_len`` tokens each, as input_ids = labels."""
    import torch

    from svdadapt.data import make_samples, resolve

    samples = make_samples(resolve("wiki"), tokenizer, size, seq_len, seed=1)
    ids = torch.tensor([s.input_ids[:seq_len] for s in samples], device=device)  # (b, L)
    return {"input_ids": ids, "labels": ids}


def resident_gib() -> float:
    """This process's resident memory now (GiB)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / GIB


def peak_gib() -> float:
    """This process's peak resident memory so far (GiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def train_steps(model, inputs: dict, steps: int) -> list[float]:
    import torch

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def measured(model, tokenizer, args: dict) -> dict:
    """Train ``model`` a few steps and report its memory (see the module docstring)."""
    import torch

    cuda = args["device"].startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    after_load = torch.cuda.memory_allocated() / GIB if cuda else resident_gib()
    inputs = batch(tokenizer, args["batch_size"], args["seq_len"], args["device"])
    model.eval()
    with torch.no_grad():  # an eval-mode forward first: the AVX512-BF16 repack trap, were it open
        model(input_ids=inputs["input_ids"][:1])
    times = train_steps(model, inputs, args["steps"])
    peak = torch.cuda.max_memory_allocated() / GIB if cuda else peak_gib()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"after_load_gib": after_load, "peak_gib": peak, "step_s": sorted(times)[len(times) // 2],
            "trainable": trainable}  # fmt: skip


def child_run(run: str, args: dict) -> dict:
    import torch

    from svdadapt.runs import Run

    torch.manual_seed(0)
    loaded = Run.open(run).load_adapted(device=args["device"])
    return measured(loaded.model, loaded.tokenizer, args)


def child_peft_qlora(model: str, args: dict) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from svdadapt.models import load_tokenizer, resolve_location

    torch.manual_seed(0)
    location = resolve_location(model)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(location, quantization_config=config,
                                                device_map={"": args["device"]}, dtype=torch.float32)  # fmt: skip
    for module in base.modules():  # the repack trap, closed as a careful CPU user must
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    peft = get_peft_model(
        base, LoraConfig(r=args["rank"], lora_alpha=args["rank"], target_modules=PROJECTIONS.split(","))
    )
    return measured(peft, load_tokenizer(location), args)


def child_build(argv: str, args: dict) -> dict:
    """A build in this process (its CLI arguments ``argv``): wall seconds and peak memory."""
    import torch

    from svdadapt.cli import main

    cuda = args["device"].startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    assert main(json.loads(argv)) == 0
    seconds = time.perf_counter() - start
    return {"build_s": seconds, "peak_gib": torch.cuda.max_memory_allocated() / GIB if cuda else peak_gib()}


CHILDREN = {"run": child_run, "peft-qlora": child_peft_qlora, "build": child_build}


def run_child(kind: str, target: str, args: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--target", target, "--kwargs", json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} {target} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_argv(model: str, method: str, out: Path, args: dict, quantize: str | None) -> list[str]:
    argv = ["build", "--model", model, "--method", method, "--rank", str(args["rank"]), "--targets", PROJECTIONS,
            "--device", args["device"], "--out", str(out)]  # fmt: skip
    if method.startswith(("corda", "cloq", "eva", "lora-null")):
        argv += ["--data", "wiki", "--samples", "16", "--seq-len", "256", "--batch-size", "8"]
    return argv + (["--quantize", quantize] if quantize else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--target")
    parser.add_argument("--kwargs", default="{}")
    parser.add_argument("--model", default="default")
    parser.add_argument("--method", default="pissa")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.target, json.loads(args.kwargs))))
        return

    from machine import describe, line

    settings = {k: getattr(args, k) for k in ("device", "rank", "batch_size", "seq_len", "steps")}
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, quantize in ((f"{args.method} float", None), (f"{args.method} nf4", "nf4")):
            out = Path(tmp) / label.replace(" ", "-")
            built = run_child(
                "build", json.dumps(build_argv(args.model, args.method, out, settings, quantize)), settings
            )
            figures[label] = {**run_child("run", str(out), settings), "build_s": built["build_s"],
                              "build_peak_gib": built["peak_gib"]}  # fmt: skip
        figures["PEFT QLoRA nf4"] = run_child("peft-qlora", args.model, settings)
    print(f"machine: {line()}")
    print(f"model {args.model}, {args.device}, r = {args.rank} on {PROJECTIONS}, batch {args.batch_size} × "
          f"{args.seq_len} tokens, {args.steps} AdamW steps; one process per contestant\n")  # fmt: skip
    unit = "GPU GiB" if args.device.startswith("cuda") else "RSS GiB"
    print(f"{'contestant':18s} {'loaded ' + unit:>15s} {'peak ' + unit:>13s} {'s / step':>9s} {'build peak':>11s}")
    for name, f in figures.items():
        build = f"{f['build_peak_gib']:11.2f}" if "build_peak_gib" in f else f"{'–':>11s}"
        print(f"{name:18s} {f['after_load_gib']:15.2f} {f['peak_gib']:13.2f} {f['step_s']:9.2f} {build}")
    if args.json:
        payload = {"machine": describe(), "settings": {**settings, "model": args.model, "method": args.method},
                   "figures": figures}  # fmt: skip
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
