"""Quantized bases: how close each quantized initialisation starts to the float model.

Per init (QLoRA = lora + plain; LoftQ-style = lora + refine from zero; QPiSSA, QCorDA-IPA and
QCorDA-KPA plain and refined; CLoQ with one round and with more), per layer kind (q/k/v/o/gate/up/
down), averaged over the model's blocks: the relative Frobenius error ‖W − Q − s·B·A‖/‖W‖, the error
on the calibration inputs ‖(W − Ŵ)·C^{1/2}‖/‖W·C^{1/2}‖, the held-out wiki perplexity of the model at
init (dequantized base + adapter in float32: what the 4-bit model computes) against the float
original (with the mean change of each window's NLL and its standard error over the windows, paired
with the float model's), and the seconds to build (the method's decomposition, then the quantization). Each
method's factors come from the build's own code (``build_adapters`` over a covariance store
calibrated once on wiki, here 32 × 256 tokens, reused from ``--work``). Two spectra explain the
gains per layer kind: the share of ‖W‖² in W's top r singular values (what a residual base such as
QPiSSA takes off the grid) and the share of tr(C) in the inputs' top r eigenvalues (how much of the
quantization error CLoQ's refit can aim where the inputs are).

By default a deep model is measured on its first, middle and last block (SmolLM2: 21 layers, ~19
minutes on 2 busy cores); perplexity needs ``--blocks all`` (``--lean`` keeps that run short).

    python benchmarks/quantize.py [--model default] [--rank 16] [--kind nf4] [--rounds 2] [--json FILE]
    python benchmarks/quantize.py --blocks all --lean --only QLoRA QPiSSA QCorDA-IPA QCorDA-KPA
    python benchmarks/quantize.py --synthetic llama-small --synthetic-blocks 4   # power-law spectrum
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # synthetic.py beside this file


@dataclass(frozen=True)
class Variant:
    label: str
    method: str  # the row whose factors it starts from
    how: str  # plain, refine or cloq
    rounds: int  # 0 for plain; --rounds for "+ refine"


def variants(rounds: int) -> list[Variant]:
    return [
        Variant("QLoRA", "lora", "plain", 0),
        Variant("LoftQ-style", "lora", "refine", rounds),
        Variant("QPiSSA", "pissa", "plain", 0),
        Variant("QPiSSA + refine", "pissa", "refine", rounds),
        Variant("QCorDA-IPA", "corda-ipa", "plain", 0),
        Variant("QCorDA-IPA + refine", "corda-ipa", "refine", rounds),
        Variant("QCorDA-KPA", "corda-kpa", "plain", 0),
        Variant("QCorDA-KPA + refine", "corda-kpa", "refine", rounds),
        Variant("CLoQ", "lora", "cloq", 1),
        Variant("CLoQ + refine", "lora", "cloq", rounds),
        Variant("QPiSSA + CLoQ", "pissa", "cloq", rounds),
    ]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def kind_of(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def block_of(name: str) -> int:
    return next(int(part) for part in name.split(".") if part.isdigit())


def prepare_model(args, work: Path) -> tuple[str, str]:
    """The model to load (the embedded SmolLM2 or a synthetic one written once into ``work``) and
    what it is, in words."""
    if not args.synthetic:
        return args.model, f"{args.model} (float32 weights dequantized from its GGUF Q4_1 file)"
    import synthetic

    blocks = args.synthetic_blocks
    directory = work / f"{args.synthetic}-{blocks}-spectrum{args.spectrum:g}"
    if not directory.exists():
        synthetic.write_model(args.synthetic, directory, layers=blocks, spectrum=args.spectrum)
    return str(directory), f"synthetic {args.synthetic}, {blocks} blocks, singular values ∝ i^-{args.spectrum:g}"


def covariances(model: str, work: Path, samples: int, seq_len: int) -> Path:
    from svdadapt.commands import CalibrateOptions, calibrate
    from svdadapt.data.options import DataOptions

    out = work / f"covariances-{Path(model).name}-wiki-{samples}x{seq_len}"
    started = time.monotonic()
    calibrate(
        CalibrateOptions(
            model=model,
            out=str(out),
            resume=True,
            source=DataOptions(data="wiki", samples=samples, seq_len=seq_len, batch_size=8),
        ),
        progress=False,
    )  # fmt: skip  (resume: a finished store is reused as is)
    log(f"covariances ready in {time.monotonic() - started:.0f} s: {out}")
    return out


def method_factors(method: str, plan, store) -> tuple[dict, float]:
    """{layer: LayerAdapter} as the build makes them (new bases discarded), and the seconds it took."""
    from svdadapt.build import build_adapters, waves_from_store, waves_without_statistics
    from svdadapt.methods import get_method

    row = get_method(method)
    waves = waves_from_store(store, list(plan), row.needs) if row.needs else waves_without_statistics(plan)
    started = time.monotonic()
    adapters = build_adapters(row, plan, waves, seed=0, progress=False, put_base=lambda *_: None)
    return adapters.layers, time.monotonic() - started


def top_energy(W: torch.Tensor, rank: int) -> float:
    S = torch.linalg.svdvals(W.double())
    return ((S[:rank] ** 2).sum() / (S**2).sum()).item()


def input_energy(C: torch.Tensor, rank: int) -> float:
    """The share of tr(C) in C's top r eigenvalues: how few input directions carry the inputs."""
    values = torch.linalg.eigvalsh(C.double())
    return (values[-rank:].sum() / values.sum()).item()


def grid_check(W: torch.Tensor, block: int = 32) -> float:
    """The mean number of distinct values per block of 32 (≤ 16: already on a 4-bit grid, as Q4_1)."""
    rows = W.reshape(-1, block)[:256]
    return statistics.mean(len(torch.unique(r)) for r in rows)


def run(args) -> dict:
    from svdadapt.build import plan_layers
    from svdadapt.evaluate.perplexity import evaluation_windows, perplexity
    from svdadapt.models import load_model
    from svdadapt.quantize import input_root, quantized_factors
    from svdadapt.store import CovarianceStore
    from svdadapt.targets import find_targets

    torch.manual_seed(0)
    work = Path(args.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    model_spec, described = prepare_model(args, work)
    store_dir = (
        Path(args.covariances) if args.covariances else covariances(model_spec, work, args.samples, args.seq_len)
    )
    store = CovarianceStore.load(store_dir)
    loaded = load_model(model_spec)
    model, tokenizer = loaded.model, loaded.tokenizer
    every = find_targets(model)
    blocks = sorted({block_of(n) for n in every})
    if args.blocks is None:  # first, middle and last block of a deep model: minutes, not hours, on 2 busy cores
        wanted = blocks if len(blocks) <= 4 else [blocks[0], blocks[len(blocks) // 2], blocks[-1]]
    else:
        wanted = blocks if args.blocks == "all" else [int(b) for b in args.blocks.split(",")]
    targets = {n: m for n, m in every.items() if block_of(n) in wanted}
    whole = set(wanted) >= set(blocks)  # perplexity only means the 4-bit model when every block is quantized
    plan = plan_layers(targets, args.rank, None)
    originals = {name: module.weight.detach().clone() for name, module in targets.items()}  # (out, in) float32
    windows = evaluation_windows("wiki-heldout", tokenizer, args.eval_seq_len, args.eval_windows)
    started = time.monotonic()
    reference = perplexity(model, windows, batch_size=4, progress=False) if whole else None
    float_ppl = reference.perplexity if whole else None
    seconds = time.monotonic() - started
    if whole:
        log(f"float perplexity {float_ppl:.3f} ({len(windows.ids)} × {args.eval_seq_len} tokens, {seconds:.0f} s)")
    spectrum = {} if args.lean else {name: top_energy(W, args.rank) for name, W in originals.items()}
    grid = statistics.mean(grid_check(W) for W in list(originals.values())[:7])

    factors, build_seconds = {}, {}
    chosen = [v for v in variants(args.rounds) if not args.only or v.label in args.only]
    for method in dict.fromkeys(v.method for v in chosen):
        factors[method], build_seconds[method] = method_factors(method, plan, store)
        log(f"{method}: factors of {len(plan)} layers in {build_seconds[method]:.1f} s")

    groups: dict[str, list[str]] = {}
    for name in plan:
        groups.setdefault(store.group_key(name), []).append(name)
    shares = {} if args.lean else {k: input_energy(store.covariance(m[0]), args.rank) for k, m in groups.items()}
    inputs = {name: shares[store.group_key(name)] for name in plan} if shares else {}
    rows, roots = [], {}
    for variant in chosen:
        started = time.monotonic()
        layers = []
        for key, members in groups.items():
            C = store.covariance(members[0]).to(torch.float64)  # (in, in), shared by the group
            if variant.how == "cloq" and key not in roots:  # one eigendecomposition per input, for every cloq init
                roots[key] = input_root(C)
            root = roots.get(key)
            for name in members:
                adapter = factors[variant.method][name]
                t = time.monotonic()
                layer = quantized_factors(
                    originals[name], adapter.B, adapter.A, adapter.scaling, args.kind, variant.how, variant.rounds,
                    covariance=None if args.lean and variant.how != "cloq" else C, root=root,
                )  # fmt: skip
                with torch.no_grad():
                    W_hat = layer.base.double() + adapter.scaling * (layer.b @ layer.a)  # what the 4-bit model computes
                    targets[name].weight.copy_(W_hat.to(torch.float32))
                layers.append({"layer": name, "kind": kind_of(name), "block": block_of(name), "error": layer.error,
                               "weighted_error": layer.weighted_error, "round_kept": layer.rounds,
                               "seconds": time.monotonic() - t})  # fmt: skip
        quantize_seconds = time.monotonic() - started
        found = perplexity(model, windows, batch_size=4, progress=False) if whole else None
        ppl = found.perplexity if whole else None
        shift = paired_shift(found.window_nll, reference.window_nll) if whole else None
        with torch.no_grad():
            for name, module in targets.items():
                module.weight.copy_(originals[name])
        row = {**vars(variant), "layers": layers, "perplexity": ppl, "nll_shift": shift,
               "build_seconds": build_seconds[variant.method],
               "quantize_seconds": quantize_seconds}  # fmt: skip
        rows.append(row)
        log(f"{variant.label}: weighted {mean(layers, 'weighted_error'):.4f}, relative {mean(layers, 'error'):.4f}, "
            f"PPL {ppl} (ΔNLL {shift}), {quantize_seconds:.0f} s")  # fmt: skip
    return {
        "model": described, "rank": args.rank, "alpha": args.rank, "kind": args.kind, "block": 64,
        "rounds": args.rounds, "blocks": wanted, "of_blocks": len(blocks),
        "calibration": f"wiki, {args.samples} × {args.seq_len} tokens ({store_dir.name})",
        "evaluation": f"wiki-heldout, {len(windows.ids)} spread windows of {args.eval_seq_len} tokens" if whole
                      else "no perplexity (only some blocks quantized; --blocks all)",
        "float_perplexity": float_ppl, "distinct_values_per_32_block": grid,
        "spectrum": {k: statistics.mean(v for n, v in spectrum.items() if kind_of(n) == k) for k in kinds(spectrum)},  # noqa: E501
        "input_spectrum": {k: statistics.mean(v for n, v in inputs.items() if kind_of(n) == k) for k in kinds(inputs)},
        "rows": rows, "threads": torch.get_num_threads(),
    }  # fmt: skip


def paired_shift(nll: list[float], reference: list[float]) -> tuple[float, float]:
    """Mean per-window NLL change against the float model and its standard error (paired windows)."""
    diffs = [a - b for a, b in zip(nll, reference, strict=True)]
    return statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs))


def kinds(names) -> list[str]:
    return list(dict.fromkeys(kind_of(n) for n in names))


def mean(layers: list[dict], key: str, kind: str | None = None) -> float:
    values = [r[key] for r in layers if (kind is None or r["kind"] == kind) and r[key] is not None]
    return statistics.mean(values) if values else math.nan


def table(result: dict) -> str:
    rows = result["rows"]
    names = kinds(r["layer"] for r in rows[0]["layers"])
    lines = [
        f"{result['model']}; blocks {','.join(map(str, result['blocks']))} of {result['of_blocks']}; r = "
        f"{result['rank']}, α = r, {result['kind']} blocks of 64, {result['rounds']} rounds where refined; "
        f"calibration {result['calibration']}; {result['evaluation']}"
        + (f"; float PPL {result['float_perplexity']:.3f}" if result["float_perplexity"] else ""),
        "",
    ]
    for key, title in (("weighted_error", "input-weighted error"), ("error", "relative Frobenius error")):
        lines.append(f"{title} ‖(W − Ŵ)·C^½‖/‖W·C^½‖, mean over blocks" if key == "weighted_error"
                     else f"{title} ‖W − Ŵ‖/‖W‖, mean over blocks")  # fmt: skip
        lines.append(f"{'init':22s} " + " ".join(f"{k:>9s}" for k in names) + f" {'all':>9s}")
        for row in rows:
            cells = " ".join(f"{mean(row['layers'], key, k):9.4f}" for k in names)
            lines.append(f"{row['label']:22s} {cells} {mean(row['layers'], key):9.4f}")
        lines.append("")
    lines.append(f"{'init':22s} {'PPL':>8s} {'ΔPPL %':>8s} {'ΔNLL ± s.e.':>18s} {'build s':>8s} {'quant s':>8s}")
    for row in rows:
        ppl, change, shift = "–", "–", "–"
        if row["perplexity"] is not None:
            ppl = f"{row['perplexity']:.3f}"
            change = f"{100 * (row['perplexity'] / result['float_perplexity'] - 1):+.2f}"
            shift = f"{row['nll_shift'][0]:+.4f} ± {row['nll_shift'][1]:.4f}"
        lines.append(f"{row['label']:22s} {ppl:>8s} {change:>8s} {shift:>18s} {row['build_seconds']:8.1f} "
                     f"{row['quantize_seconds']:8.1f}")  # fmt: skip
    lines.append("")
    lines.append("share of ‖W‖² in the top r singular values: "
                 + ", ".join(f"{k} {v:.3f}" for k, v in result["spectrum"].items()))  # fmt: skip
    if "input_spectrum" in result:
        lines.append("share of tr(C) in the top r eigenvalues of the inputs' covariance: "
                     + ", ".join(f"{k} {v:.3f}" for k, v in result["input_spectrum"].items()))  # fmt: skip
    lines += ["", *verdict(result)]
    return "\n".join(lines)


def verdict(result: dict) -> list[str]:
    """The issue's goal: the best init ≥ 25% below QLoRA's weighted error over all layers, and below
    LoftQ-style's on every layer kind."""
    by_label = {r["label"]: r for r in result["rows"]}
    if "QLoRA" not in by_label or "LoftQ-style" not in by_label:
        return []
    best = min(result["rows"], key=lambda r: mean(r["layers"], "weighted_error"))
    qlora = mean(by_label["QLoRA"]["layers"], "weighted_error")
    ours = mean(best["layers"], "weighted_error")
    lines = [f"best: {best['label']}, weighted error {ours:.4f} = {100 * (1 - ours / qlora):.1f}% below QLoRA's "
             f"{qlora:.4f} (goal ≥ 25%)"]  # fmt: skip
    loftq = by_label["LoftQ-style"]["layers"]
    for k in kinds(r["layer"] for r in loftq):
        a, b = mean(best["layers"], "weighted_error", k), mean(loftq, "weighted_error", k)
        lines.append(f"  {k:10s} {a:.4f} vs LoftQ-style {b:.4f}: {'below' if a < b else 'NOT below'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model to measure (default: the embedded SmolLM2)")
    parser.add_argument("--synthetic", help="measure a synthetic model of this shape (benchmarks/synthetic.py)")
    parser.add_argument("--blocks", help="blocks to quantize and measure: all, or e.g. 0,10,20,29 (default: all of "
                        "a model of ≤ 4 blocks, else first, middle and last); perplexity only with all")  # fmt: skip
    parser.add_argument("--synthetic-blocks", type=int, default=4, help="blocks of the synthetic model")
    parser.add_argument("--spectrum", type=float, default=0.35, help="synthetic singular values ∝ i^-SPECTRUM")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--kind", default="nf4", choices=["nf4", "fp4", "int8"])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the refined inits")
    parser.add_argument("--samples", type=int, default=32, help="calibration windows of wiki")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per calibration window")
    parser.add_argument("--covariances", help="an existing covariance store of the model (else calibrated into --work)")
    parser.add_argument("--eval-windows", type=int, default=16, help="wiki-heldout windows, spread over its articles")
    parser.add_argument("--eval-seq-len", type=int, default=256)
    parser.add_argument("--only", nargs="*", help="only these inits (labels as printed)")
    parser.add_argument("--lean", action="store_true", help="no spectra and no weighted error outside cloq (a "
                        "perplexity run over all blocks)")  # fmt: skip
    parser.add_argument("--work", default="/tmp/svdadapt-quantize-bench", help="where stores and models are kept")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    started = time.monotonic()
    result = run(args)
    result["seconds"] = time.monotonic() - started
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
