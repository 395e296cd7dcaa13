"""Peak memory of the block-walking passes against the model's size: `calibrate` and
`build --method corda-kpa --rank 16`, offloaded (`--offload on`) and as `--offload auto` decides,
on synthetic bfloat16 checkpoints (benchmarks/synthetic.py, sharded) of 4, 16 and 32 blocks of the
1.1B Llama shape (hidden 2048, intermediate 5632, 32k vocabulary) and 2 blocks of the Llama-2-7B
shape (hidden 4096, intermediate 11008), 8 × 64 tokens of bundled wiki, on the CPU.

Each run is its own process; its peak RSS is the whole process's (``os.wait4``'s ru_maxrss).
Printed: a table, the growth in MB per block (least-squares slope over the 1.1B block counts: the
figure to watch, ~0 when the passes are flat in model size), the 32-block peak over the 4-block
one, and what the fixed part is made of (the imports, measured; one block's pieces, from its
shapes). Targets: the 32-block peak within 10% of the 4-block peak for both commands; the 7B-shape
runs under 4 GB. ``--in-place-blocks`` also runs `--offload off` at those block counts (in place
converts the whole model to float32). Checkpoints and outputs go under ``--root`` and are removed.

    python benchmarks/memory.py [--json docs/memory-bench.json] [--blocks 4,16,32] [--no-7b]
        [--auto-blocks 4,16,32] [--in-place-blocks 4] [--build-targets q_proj,k_proj,v_proj,o_proj]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from processes import run_process

SHAPE_1B, SHAPE_7B = "llama-1.1b", "llama-7b"
TOKENS = ["--data", "wiki", "--samples", "8", "--seq-len", "64", "--batch-size", "8", "--device", "cpu"]
COMMANDS = {
    "calibrate": ["calibrate"],
    "build": ["build", "--method", "corda-kpa", "--rank", "16"],
}
IMPORTS = "import torch, transformers, svdadapt.cli, svdadapt.commands.build, svdadapt.commands.calibrate"
OFFLOADED_NOTE = "svdadapt: note: offloading"


def checkpoint(root: Path, shape: str, blocks: int) -> Path:
    """A synthetic bfloat16 checkpoint of ``blocks`` blocks of ``shape``, in 1 GiB shards."""
    from synthetic import write_model

    path = root / f"{shape}-{blocks}"
    if not (path / "config.json").is_file():
        shutil.rmtree(path, ignore_errors=True)
        print(f"writing {path}", flush=True)
        write_model(shape, path, "bfloat16", shard_gib=1.0, layers=blocks)
        os.sync()  # measured runs read a settled page cache, not one still being written back
    return path


def measure(command: str, model: Path, offload: str, out: Path, targets: str | None = None) -> dict:
    """One run of ``command`` in its own process: peak RSS (GB), wall seconds, whether it offloaded."""
    shutil.rmtree(out, ignore_errors=True)
    argv = [*COMMANDS[command], "--model", str(model), *TOKENS, "--offload", offload, "--out", str(out)]
    if targets:
        argv += ["--targets", targets]
    stdout, wall, rss_gib = run_process([sys.executable, "-m", "svdadapt", *argv])
    shutil.rmtree(out, ignore_errors=True)
    offloaded = offload == "on" or (offload == "auto" and OFFLOADED_NOTE in stdout)
    return {"peak_rss_gb": round(rss_gib * 2**30 / 1e9, 3), "wall_s": round(wall, 1), "offloaded": offloaded}


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def block_pieces(shape: str) -> dict:
    """One block's pieces (GB), from its shapes: weights as stored (bf16 mapped pages) and in
    float32 (its copy on the compute device), the covariance sums of its groups (float64), the
    embedding in float32 (brought over to record the first block's inputs)."""
    from synthetic import SHAPES

    s = SHAPES[shape]
    h, i, v = s["hidden_size"], s["intermediate_size"], s["vocab_size"]
    kv = h * s["num_key_value_heads"] // s["num_attention_heads"]
    params = 2 * h * h + 2 * h * kv + 3 * h * i
    groups = 3 * h * h + i * i  # q/k/v share one input, o its own, gate/up one, down one: (in, in) each
    return {
        "block_bf16_gb": params * 2 / 1e9,
        "block_float32_gb": params * 4 / 1e9,
        "block_covariances_float64_gb": groups * 8 / 1e9,
        "embedding_float32_gb": v * h * 4 / 1e9,
    }


def save(path: str | None, payload: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default="4,16,32", help="block counts of the 1.1B shape")
    parser.add_argument("--auto-blocks", default="4,16,32", help="block counts also run with --offload auto")
    parser.add_argument("--in-place-blocks", default="", help="block counts also run with --offload off")
    parser.add_argument("--build-targets", help="build only these layers (--targets; default: all in the blocks)")
    parser.add_argument("--build-on-only", action="store_true", help="build with --offload on only (it is slow)")
    parser.add_argument("--no-7b", action="store_true", help="skip the 2 blocks of the 7B shape")
    parser.add_argument("--root", type=Path, default=Path("/tmp/svdadapt-memory-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints")
    parser.add_argument("--json", help="also write the figures to this file (after every run)")
    args = parser.parse_args()

    from machine import describe, line
    from synthetic import parameters

    args.root.mkdir(parents=True, exist_ok=True)
    blocks = [int(b) for b in args.blocks.split(",") if b]  # "" for the 7B shape alone
    in_place = {int(b) for b in args.in_place_blocks.split(",") if b}
    auto = {int(b) for b in args.auto_blocks.split(",") if b}
    configs = [(SHAPE_1B, b) for b in blocks] + ([] if args.no_7b else [(SHAPE_7B, 2)])
    _, _, imports_gib = run_process([sys.executable, "-c", IMPORTS])
    payload = {
        "machine": describe(),
        "tokens": "8 x 64 (wiki), batch 8, device cpu",
        "build_targets": args.build_targets or "every linear layer in the blocks",
        "imports_peak_rss_gb": round(imports_gib * 2**30 / 1e9, 3),
        "pieces": {shape: block_pieces(shape) for shape in (SHAPE_1B, SHAPE_7B)},
        "runs": [],
    }
    started = time.monotonic()
    for shape, count in configs:
        model = checkpoint(args.root, shape, count)
        size = {"bf16_gb": parameters(shape, count) * 2 / 1e9, "float32_gb": parameters(shape, count) * 4 / 1e9}
        modes = ["on"] + (["auto"] if count in auto else []) + (["off"] if count in in_place else [])
        for command in COMMANDS:
            for mode in ["on"] if command == "build" and args.build_on_only else modes:
                targets = args.build_targets if command == "build" else None
                figures = measure(command, model, mode, args.root / "out", targets)
                run = {"shape": shape, "blocks": count, **size, "command": command, "offload": mode, **figures}
                payload["runs"].append(run)
                print(json.dumps(run), flush=True)
                save(args.json, payload)
        if not args.keep:
            shutil.rmtree(model)
    payload["seconds"] = round(time.monotonic() - started)
    report(payload, blocks)
    print(f"machine: {line()}")
    save(args.json, payload)


def report(payload: dict, blocks: list[int]) -> None:
    runs = payload["runs"]
    print(f"\n{'shape':11s} {'blocks':>6s} {'bf16 GB':>8s} {'f32 GB':>7s} {'command':10s} {'offload':7s} "
          f"{'offloaded':9s} {'peak RSS GB':>11s} {'wall s':>7s}")  # fmt: skip
    for r in runs:
        print(f"{r['shape']:11s} {r['blocks']:6d} {r['bf16_gb']:8.2f} {r['float32_gb']:7.2f} {r['command']:10s} "
              f"{r['offload']:7s} {str(r['offloaded']):9s} {r['peak_rss_gb']:11.2f} {r['wall_s']:7.1f}")  # fmt: skip
    growth = {}
    for command in COMMANDS:
        for mode in ("on", "auto", "off"):
            points = [(r["blocks"], r["peak_rss_gb"]) for r in runs
                      if r["shape"] == SHAPE_1B and r["command"] == command and r["offload"] == mode]  # fmt: skip
            if len(points) < 2:
                continue
            by = dict(points)
            key = f"{command} --offload {mode}"
            growth[key] = {"mb_per_block": round(slope(points) * 1000, 1)}
            if blocks and min(blocks) in by and max(blocks) in by:
                growth[key][f"{max(blocks)}_over_{min(blocks)}"] = round(by[max(blocks)] / by[min(blocks)], 3)
    payload["growth"] = growth
    print("\ngrowth over the 1.1B block counts (least squares), and the largest over the smallest:")
    for key, g in growth.items():
        print(f"  {key:26s} {g['mb_per_block']:7.1f} MB/block   " + "  ".join(
            f"{k.replace('_over_', '/')}: {v:.3f}" for k, v in g.items() if k != "mb_per_block"))  # fmt: skip
    print(f"\nfixed part: the imports (torch, transformers, svdadapt) peak at {payload['imports_peak_rss_gb']:.2f} GB;")
    for shape, p in payload["pieces"].items():
        print(f"  {shape}: one block {p['block_bf16_gb']:.3f} GB as stored, {p['block_float32_gb']:.3f} GB in float32, "
              f"its covariance sums {p['block_covariances_float64_gb']:.3f} GB (float64); "
              f"the embedding in float32 {p['embedding_float32_gb']:.3f} GB")  # fmt: skip


if __name__ == "__main__":
    main()
