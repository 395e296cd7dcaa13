"""Identity at init on the embedded SmolLM2 in float32 and bfloat16: how far the adapted model's logits
are from the original's right after building (residual base + adapter), for each residual method.

The figure is max |logits_adapted − logits_original| / max |logits_original| over held-out wiki
windows, the original computed in the same dtype. For bf16 it is set beside bf16's own error: the bf16
original against the float32 original.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from svdadapt import collect_covariances
from svdadapt.adapters.inject import inject
from svdadapt.build.core import build_adapters
from svdadapt.build.plan import plan_layers
from svdadapt.build.waves import waves_from_store, waves_without_statistics
from svdadapt.data import make_batches, make_samples, resolve
from svdadapt.methods import get_method
from svdadapt.models import load_model
from svdadapt.targets import find_targets

METHODS = ["corda-kpa", "corda-ipa", "pissa", "milora"]


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits.float()  # (batch, seq, vocab)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--samples", type=int, default=32, help="calibration samples × 256 tokens of wiki")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    reference = load_model("default", dtype=torch.float32)
    tokenizer = reference.tokenizer
    batches = make_batches(
        make_samples(resolve("wiki"), tokenizer, args.samples, 256, seed=0), 8, tokenizer.pad_token_id
    )
    store = collect_covariances(reference.model, batches, progress=False)
    held_out = make_samples(resolve("wiki-heldout"), tokenizer, 4, 256, seed=0)
    ids = torch.stack([torch.as_tensor(s.input_ids) for s in held_out])  # (4, 256)
    original = {torch.float32: logits(reference.model, ids)}
    del reference

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        if dtype not in original:
            original[dtype] = logits(load_model("default", dtype=dtype).model, ids)
        for name in METHODS:
            started = time.monotonic()
            model = load_model("default", dtype=dtype).model
            method = get_method(name, None)
            plan = plan_layers(find_targets(model, None), args.rank, None, None, None)
            if method.needs:
                waves = waves_from_store(store, list(plan), method.needs)
            else:
                waves = waves_without_statistics(plan)
            inject(model, build_adapters(method, plan, waves, progress=False))
            adapted = logits(model, ids)
            rows.append(
                {
                    "dtype": str(dtype).removeprefix("torch."),
                    "method": name,
                    "vs_same_dtype_original": rel(adapted, original[dtype]),
                    "vs_float32_original": rel(adapted, original[torch.float32]),
                    "dtype_own_error": rel(original[dtype], original[torch.float32]),
                    "top1_agreement": (adapted.argmax(-1) == original[dtype].argmax(-1)).float().mean().item(),
                    "seconds": round(time.monotonic() - started, 1),
                }
            )
            r = rows[-1]
            print(
                f"{r['dtype']:>8} {name:>10}: rel. error vs same-dtype original {r['vs_same_dtype_original']:.2e}, "
                f"vs float32 original {r['vs_float32_original']:.2e} (the {r['dtype']} original itself: "
                f"{r['dtype_own_error']:.2e}); top-1 agreement {r['top1_agreement']:.4f}",
                flush=True,
            )
    if args.json:
        from machine import describe

        with open(args.json, "w") as f:
            json.dump({"machine": describe(), "rank": args.rank, "tokens": ids.numel(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
