"""Calibrate + build cost: svdadapt vs PEFT's preprocess_corda + get_peft_model (CorDA kpm).

Embedded SmolLM2-135M-Instruct, 16 samples x 256 tokens of bundled wiki, all 7 projections of all
30 blocks, rank 16, corda-kpa. Each contestant runs in its own process; the parent reads its wall
time and peak RSS (os.wait4). Also: decomposition time per layer shape against one plain SVD of the
same weight.

    python benchmarks/build.py [--json FILE] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from processes import run_process

SAMPLES, SEQ_LEN, SEED, RANK = 16, 256, 0, 16
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def cli_command(out: str) -> list[str]:
    """`svdadapt build` exactly as a user runs it, in a process of its own: calibrates on the fly,
    writes base + PEFT adapter. Its timed section is the build_seconds it records in run.json."""
    return [
        sys.executable, "-m", "svdadapt", "build", "--model", "default", "--method", "corda-kpa",
        "--rank", str(RANK), "--data", "wiki", "--samples", str(SAMPLES), "--seq-len", str(SEQ_LEN),
        "--seed", str(SEED), "--targets", ",".join(PROJECTIONS), "--device", "cpu", "--out", out,
    ]  # fmt: skip


def child_svdadapt_api() -> dict:
    """The library path, in memory like PEFT's: calibrate block-wise and decompose each block as
    soon as its covariances are final, adapters left in memory."""
    import torch

    from svdadapt.build import build_adapters, plan_layers, waves_on_the_fly
    from svdadapt.data import make_batches, make_samples, resolve
    from svdadapt.methods import get_method
    from svdadapt.models import load_model
    from svdadapt.targets import find_targets

    loaded = load_model("default")
    start = time.perf_counter()
    samples = make_samples(resolve("wiki"), loaded.tokenizer, SAMPLES, SEQ_LEN, seed=SEED)
    batches = make_batches(samples, 8, loaded.tokenizer.pad_token_id)
    modules = find_targets(loaded.model, PROJECTIONS)
    plan = plan_layers(modules, RANK, RANK)
    waves = waves_on_the_fly(loaded.model, batches, modules, "covariance", torch.float64, progress=False)
    adapters = build_adapters(get_method("corda-kpa"), plan, waves, progress=False)
    assert len(adapters.layers) == 210
    return {"timed_s": time.perf_counter() - start}


def child_peft(save_to: str | None = None) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import preprocess_corda

    from svdadapt.data import make_samples, resolve
    from svdadapt.models import load_model

    loaded = load_model("default")
    start = time.perf_counter()
    samples = make_samples(resolve("wiki"), loaded.tokenizer, SAMPLES, SEQ_LEN, seed=SEED)
    ids = torch.tensor([s.input_ids for s in samples])
    config = LoraConfig(
        r=RANK, lora_alpha=RANK, target_modules=PROJECTIONS, init_lora_weights="corda",
        corda_config=CordaConfig(corda_method="kpm"),
    )  # fmt: skip

    @torch.no_grad()
    def run_model():  # PEFT's hook squeezes dim 0: batch size 1 only
        for row in ids:
            loaded.model(input_ids=row[None])

    preprocess_corda(loaded.model, config, run_model=run_model)
    peft_model = get_peft_model(loaded.model, config)
    if save_to:  # what a user must keep: the adapter and the residual base
        peft_model.save_pretrained(Path(save_to) / "adapter")
        peft_model.get_base_model().save_pretrained(Path(save_to) / "base")
    return {"timed_s": time.perf_counter() - start}


def child_decomposition_timing() -> dict:
    """Per layer shape of SmolLM2 block 10: our context decomposition vs one plain float64 SVD, on
    one thread as each of build's parallel workers runs it."""
    from svdadapt.backend.scheduling import single_threaded
    from svdadapt.calibrate import collect_covariances
    from svdadapt.data import make_batches, make_samples, resolve
    from svdadapt.models import load_model
    from svdadapt.targets import find_targets, weight_matrix

    loaded = load_model("default")
    samples = make_samples(resolve("wiki"), loaded.tokenizer, SAMPLES, SEQ_LEN, seed=SEED)
    batches = make_batches(samples, 8, loaded.tokenizer.pad_token_id)
    block = "model.layers.10."
    modules = {n: m for n, m in find_targets(loaded.model, PROJECTIONS).items() if n.startswith(block)}
    store = collect_covariances(loaded.model, batches, list(modules))
    rows = {}
    with single_threaded():
        for name, module in modules.items():
            W = weight_matrix(module).detach()
            rows[name[len(block) :]] = {"shape": list(W.shape), **_time_layer(W, store.covariance(name), name)}
    return {"timed_s": 0.0, "rows": rows}


def _time_layer(W, C, name: str) -> dict:
    """Best of 3 (after a warm-up), in milliseconds."""
    import torch

    from svdadapt.decompose import Take, context_svd, covariance_context, factorize

    contestants = {
        "context": lambda: context_svd(W, C, name=name),
        "kpa bottom-r": lambda: factorize(W, lambda d: covariance_context(C, d, name), name, want=(Take.BOTTOM, RANK)),
        "plain svd float64": lambda: torch.linalg.svd(W.double(), full_matrices=False),
        "plain svd float32": lambda: torch.linalg.svd(W.float(), full_matrices=False),
    }
    timings = {}
    for label, fn in contestants.items():
        fn()
        reps = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            reps.append(time.perf_counter() - start)
        timings[label] = min(reps) * 1e3
    return timings


CHILDREN = {
    "svdadapt_api": child_svdadapt_api,
    "peft": child_peft,
    "decomposition": child_decomposition_timing,
}


def run_child(name: str, **kwargs) -> dict:
    if name == "svdadapt_cli":
        shutil.rmtree(kwargs["out"], ignore_errors=True)  # each repeat writes a new run, none replaces one
        _, wall, rss = run_process(cli_command(kwargs["out"]), kwargs.get("env"))
        timed = json.loads((Path(kwargs["out"]) / "run.json").read_text())["build_seconds"]
        return {"timed_s": timed, "wall_s": wall, "peak_rss_gib": rss}
    out, wall, rss = run_process([sys.executable, __file__, "--child", name, "--kwargs", json.dumps(kwargs)])
    return {**json.loads(out.strip().splitlines()[-1]), "wall_s": wall, "peak_rss_gib": rss}


def repeated(name: str, repeats: int, **kwargs) -> dict:
    """Run a contestant ``repeats`` times; keep the median of each figure (noisy shared machine)."""
    runs = [run_child(name, **kwargs) for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in ("timed_s", "wall_s", "peak_rss_gib")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    parser.add_argument("--kwargs", default="{}")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](**json.loads(args.kwargs))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "svdadapt build CLI (calibrate on the fly, write run)": repeated(
                "svdadapt_cli", args.repeats, out=str(Path(tmp) / "run")
            ),
            "svdadapt build CLI, torch's own float32 kernels (SVDADAPT_ONEDNN=0)": repeated(
                "svdadapt_cli", args.repeats, out=str(Path(tmp) / "run"), env={"SVDADAPT_ONEDNN": "0"}
            ),
            "svdadapt library (calibrate + build, in memory)": repeated("svdadapt_api", args.repeats),
            "PEFT preprocess_corda + get_peft_model (in memory)": repeated("peft", args.repeats),
            "PEFT + save_pretrained of adapter and residual base": repeated(
                "peft", args.repeats, save_to=str(Path(tmp) / "peft")
            ),
        }
    decomposition = run_child("decomposition")["rows"]

    from machine import describe, line

    print(f"machine: {line()}; median of {args.repeats}")
    print(f"{SAMPLES} samples x {SEQ_LEN} tokens of bundled wiki, rank {RANK}, 210 layers, corda-kpa / kpm\n")
    print(f"{'contestant':70s} {'timed s':>8s} {'process s':>9s} {'peak RSS GiB':>12s}")
    for name, r in runs.items():
        print(f"{name:70s} {r['timed_s']:8.2f} {r['wall_s']:9.2f} {r['peak_rss_gib']:12.2f}")
    cli = runs["svdadapt build CLI (calibrate on the fly, write run)"]
    api = runs["svdadapt library (calibrate + build, in memory)"]
    peft = runs["PEFT preprocess_corda + get_peft_model (in memory)"]
    peft_saved = runs["PEFT + save_pretrained of adapter and residual base"]
    ratios = {
        "CLI process / PEFT process, wall (target <= 0.5)": cli["wall_s"] / peft["wall_s"],
        "CLI process / PEFT process, peak RSS (target <= 0.5)": cli["peak_rss_gib"] / peft["peak_rss_gib"],
        "CLI process / PEFT+save process, wall": cli["wall_s"] / peft_saved["wall_s"],
        "library / PEFT, timed section": api["timed_s"] / peft["timed_s"],
        "library / PEFT, peak RSS": api["peak_rss_gib"] / peft["peak_rss_gib"],
    }
    print()
    for name, value in ratios.items():
        print(f"{name:70s} {value:6.2f}")
    print("\ndecomposition per layer of block 10 (ms, best of 3)")
    columns = ("context", "kpa r", "svd f64", "svd f32", "kpa/svd64")
    print(f"{'layer':16s} {'shape':>12s} " + " ".join(f"{c:>9s}" for c in columns))
    for name, row in decomposition.items():
        shape = "x".join(map(str, row["shape"]))
        ctx, kpa, f64, f32 = (row[k] for k in ("context", "kpa bottom-r", "plain svd float64", "plain svd float32"))
        print(f"{name:16s} {shape:>12s} {ctx:9.1f} {kpa:9.1f} {f64:9.1f} {f32:9.1f} {kpa / f64:9.2f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"machine": describe(), "runs": runs, "ratios": ratios, "decomposition": decomposition}, indent=2
            )
        )


if __name__ == "__main__":
    main()
