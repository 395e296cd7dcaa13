"""Agreement with a float64 textbook decomposition, for svdadapt and for PEFT 0.21, on every target
layer of the embedded SmolLM2 (all 30 blocks), given the same covariances.

For each method and layer: ‖s·B·A − reference‖_F / ‖reference‖_F, where the reference is the SVD of
W·C' in float64 (C' = C + 0.01·mean diag C · I, V = C'⁻¹Ĥ by a solve). Also the relative spectral
gap at the rank cut, (σ_{k−r} − σ_{k−r+1}) / σ_1 for bottom-r, which says how well float32 can
resolve the chosen components at all. Reuses the test suite's peer helpers (tests/methods/test_peft_parity.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/ helpers

from tests.methods.test_peft_parity import float64_reference, ours, peft_model  # noqa: E402

from svdadapt import collect_covariances  # noqa: E402
from svdadapt.data import make_batches, make_samples, resolve  # noqa: E402
from svdadapt.models import load_model  # noqa: E402
from svdadapt.targets import weight_matrix  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--samples", type=int, default=16, help="calibration windows × 256 tokens of wiki")
    parser.add_argument("--methods", default="corda-kpa,corda-ipa,pissa")
    parser.add_argument("--json", help="also write the per-layer figures here")
    args = parser.parse_args()

    loaded = load_model("default")
    model, tok = loaded.model, loaded.tokenizer
    batches = make_batches(make_samples(resolve("wiki"), tok, args.samples, 256, seed=0), 8, tok.pad_token_id)
    store = collect_covariances(model, batches)
    modules = dict(model.named_modules())
    report = {}
    for method in args.methods.split(","):
        started = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = peft_model(copy.deepcopy(model), store, method, args.rank, args.rank)
        mine = ours(copy.deepcopy(model), store, method, args.rank, args.rank)
        rows = []
        for name, adapter in mine.layers.items():
            W = weight_matrix(modules[name]).double()
            C = store.covariance(name).double() if method.startswith("corda") else None
            reference, gap = float64_reference(W, C, method, args.rank)
            layer = theirs.base_model.model.get_submodule(name)
            peft_product = layer.scaling["default"] * (
                layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double()
            )
            rows.append(
                {
                    "layer": name,
                    "gap": gap,
                    "svdadapt": ((adapter.delta() - reference).norm() / reference.norm()).item(),
                    "peft": ((peft_product - reference).norm() / reference.norm()).item(),
                }
            )
        worst = max(rows, key=lambda r: r["peft"])
        for who in ("svdadapt", "peft"):
            values = [r[who] for r in rows]
            print(
                f"{method:>9} {who:>8}: relative error of s·B·A vs float64 over {len(rows)} layers: "
                f"median {statistics.median(values):.1e}, max {max(values):.1e}"
            )
        print(
            f"{method:>9} worst PEFT layer: {worst['layer']} ({worst['peft']:.1%} off; svdadapt "
            f"{worst['svdadapt']:.1e}; relative gap at the cut {worst['gap']:.1e}); "
            f"{sum(r['peft'] > 1e-2 for r in rows)} layers with PEFT > 1% off ({time.monotonic() - started:.0f} s)",
            flush=True,
        )
        report[method] = rows
    if args.json:
        from machine import describe

        machine = describe()
        Path(args.json).write_text(
            json.dumps({"machine": machine, "rank": args.rank, "tokens": store.num_tokens, **report}, indent=1)
        )


if __name__ == "__main__":
    main()
