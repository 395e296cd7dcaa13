"""EVA and LoRA-Null: the two rows built from the inputs' spectrum.

EVA against a float64 textbook PCA of the captured inputs (tight) and against PEFT 0.21's EVA on the
same data and tiny models (principal angles and redistributed ranks). PEFT's incremental PCA is
approximate — a randomized SVD (``svd_lowrank``, q = 2k, 4 iterations) per step, truncated to k
components, stopped once consecutive steps agree to cosine 0.99 — and it centres the data, as
svdadapt does with the mean it now keeps in the store. Fed one batch holding all the tokens (its
first step then sees everything), PEFT's ranks equal svdadapt's exactly, and its directions agree
as far as the spectrum determines them: on these random tiny models the eigenvalues lie close
together (λ_{k+1}/λ_k ≈ 0.9–0.99), and by Davis–Kahan an approximation error ε moves the top-k
subspace by sin θ ≈ ε/δ_k, δ_k = 1 − λ_{k+1}/λ_k. Measured over every layer and k ≤ r (llama,
gpt2): sin θ_k · δ_k ≤ 0.0074 (so θ ≤ 4° wherever δ ≥ 0.1, ≤ 0.02° on the best-separated
components); asserted: < 0.03. (Fed the same tokens in 16 batches,
PEFT stops early and 6 of 14 llama layers get other ranks: the early stop, not a difference in
the method.)

LoRA-Null: adapter = W·N·Nᵀ (N: the r smallest eigenvectors of C) against a float64 reference,
identity at init, and the change of each layer's output on held-out calibration-like inputs after
20 Adam steps on other data, against LoRA's with the same steps and learning rate (measured: 0.006
of LoRA's with A frozen, the paper's second variant; 0.53 with A trained).
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

from svdadapt import collect_covariances
from svdadapt.adapters.inject import adapter_state, inject
from svdadapt.assets import tiny_model
from svdadapt.build import build_adapters, plan_layers, waves_from_store, waves_without_statistics
from svdadapt.build.waves import centred
from svdadapt.commands import BuildOptions, build
from svdadapt.errors import SvdadaptError
from svdadapt.methods import get_method
from svdadapt.runs import Run
from svdadapt.store import CovarianceStore
from svdadapt.targets import find_targets, weight_matrix

from ..helpers import F32  # two float32 computations of one function


def batches(n: int, seed: int, lo: int = 3, hi: int = 512, pad: bool = True) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of 4 × 32 random tokens from [lo, hi), the second row padded after 20 tokens."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(lo, hi, (4, 32), generator=gen)
        mask = torch.ones(4, 32, dtype=torch.long)
        if pad:
            mask[1, 20:], ids[1, 20:] = 0, 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def inputs_of(model, names, data) -> dict[str, torch.Tensor]:
    """Every layer's input rows (real tokens only), float64: (n, in)."""
    got: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    modules = dict(model.named_modules())
    mask: list[torch.Tensor] = []

    def hook(name):
        return lambda _m, args: got[name].append(args[0][mask[0].bool()].detach())

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    with torch.no_grad():
        for b in data:
            mask[:] = [b["attention_mask"]]
            model(**b)
    for h in handles:
        h.remove()
    return {n: torch.cat(v).double() for n, v in got.items()}


def sin_angles(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Sines of the principal angles between the row spaces of A (k, in) and B (k, in), largest last."""
    Qa, Qb = torch.linalg.qr(A.double().T)[0], torch.linalg.qr(B.double().T)[0]
    cos = torch.linalg.svdvals(Qa.T @ Qb).clamp(max=1).flip(0)
    return (1 - cos**2).clamp_min(0).sqrt()


def build_eva(model, store, rank=4, alpha=8.0, rho=None):
    plan = plan_layers(find_targets(model), rank, alpha)
    return build_adapters(get_method("eva", rho=rho), plan, waves_from_store(store, list(plan), "centred_covariance"),
                          progress=False)  # fmt: skip


# ------------------------------------------------------------------------------------------------ EVA
def test_eva_is_the_float64_pca_of_the_inputs():
    model = tiny_model("llama")
    data = batches(8, 0)
    store = collect_covariances(model, data, store_dtype=torch.float64)
    adapters = build_eva(model, store)
    X = inputs_of(model, list(find_targets(model)), data)
    for name, layer in adapters.layers.items():
        Xc = X[name] - X[name].mean(0)  # (n, in)
        _, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
        lam = S**2
        for k in range(1, layer.rank + 1):
            gap = 1 - lam[k] / lam[k - 1]
            assert sin_angles(layer.A[:k], Vh[:k])[-1] * gap < 1e-6, (name, k)  # A is stored in float32
        assert not layer.B.any() and layer.scaling == 2.0  # alpha moved with the rank: s = 8/4 stays


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_eva_matches_peft(kind):
    from peft import LoraConfig
    from peft.tuners.lora.config import EvaConfig
    from peft.tuners.lora.eva import get_eva_state_dict

    model = tiny_model(kind)
    data = batches(16, 0)
    store = collect_covariances(model, data)
    ours = build_eva(model, store)
    names = list(find_targets(model))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=names, init_lora_weights="eva", eva_config=EvaConfig(rho=2.0))
    whole = [{k: torch.cat([b[k] for b in data]) for k in data[0]}]  # one batch: PEFT's first step sees all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = get_eva_state_dict(copy.deepcopy(model), whole, config, show_progress_bar=False)
    assert {n: (ours.layers[n].rank if n in ours.layers else 0) for n in names} == {
        n: int(theirs[n].shape[0]) for n in names
    }
    separated = 0
    for name, layer in ours.layers.items():
        lam = torch.linalg.eigvalsh(centred(store.covariance(name), store.mean(name)).double()).flip(0)
        for k in range(1, layer.rank + 1):
            gap = float(1 - lam[k] / lam[k - 1])
            sin = float(sin_angles(layer.A[:k], theirs[name][:k])[-1])
            assert sin * gap < 0.03, (name, k, sin, gap)
            separated += gap >= 0.1
    assert separated >= 4  # the bound is never vacuous: there it holds θ to a few degrees


def test_eva_ranks_keep_the_budget_and_rho_bounds_them():
    model = tiny_model("llama")
    store = collect_covariances(model, batches(4, 0))
    targets = find_targets(model)
    for rho, most in ((2.0, 8), (1.5, 6)):
        adapters = build_eva(copy.deepcopy(model), store, rho=rho)
        ranks = [a.rank for a in adapters.layers.values()]
        assert sum(ranks) == 4 * len(targets) and max(ranks) <= most and len(set(ranks)) > 1
        assert all(a.alpha / a.rank == 2.0 for a in adapters.layers.values())
    assert {a.rank for a in build_eva(model, store, rho=1.0).layers.values()} == {4}  # ρ = 1: no move


# ------------------------------------------------------------------------------------------ LoRA-Null
def test_lora_null_is_w_on_the_null_space_and_the_identity_at_init():
    model = tiny_model("llama")
    data = batches(8, 0, 3, 23)  # 20 distinct tokens: inputs with a real null space
    store = collect_covariances(model, data, store_dtype=torch.float64)
    original = copy.deepcopy(model)
    ids = batches(1, 5, 3, 23)[0]
    with torch.no_grad():
        before = original(**ids).logits
    plan = plan_layers(find_targets(model), 4, 8.0)
    weights = {n: weight_matrix(p.module).double().clone() for n, p in plan.items()}
    adapters = build_adapters(get_method("lora-null"), plan, waves_from_store(store, list(plan), "covariance"),
                              progress=False)  # fmt: skip
    for name, layer in adapters.layers.items():
        _, vectors = torch.linalg.eigh(store.covariance(name).double())
        N = vectors[:, :4]  # (in, r), the 4 smallest
        reference = weights[name] @ N @ N.T  # (out, in)
        assert (layer.delta() - reference).norm() / reference.norm() < 1e-6, name
        assert (weight_matrix(plan[name].module).double() - (weights[name] - reference)).norm() < 1e-5
        assert (layer.A.double() @ vectors[:, 4:]).norm() < 1e-5 * layer.A.norm()  # A reads only N
    inject(model, adapters)
    with torch.no_grad():
        after = model(**ids).logits
    assert ((after - before).abs().max() / before.abs().max()).item() < F32


def output_change(method: str, freeze_a: bool = False, steps: int = 20) -> torch.Tensor:
    """Per target layer: ‖X·ΔWᵀ‖ on held-out calibration-like inputs X after ``steps`` Adam steps."""
    model = tiny_model("llama")
    names = list(find_targets(model))
    held = inputs_of(model, names, batches(4, 1, 3, 23, pad=False))
    store = collect_covariances(model, batches(8, 0, 3, 23))
    plan = plan_layers(find_targets(model), 4, 8.0)
    row = get_method(method, freeze_a=freeze_a)
    waves = waves_from_store(store, list(plan), row.needs) if row.needs else waves_without_statistics(plan)
    built = build_adapters(row, plan, waves, progress=False)
    inject(model, built)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for b in batches(steps, 2, 100, 140, pad=False):  # other data: another slice of the vocabulary
        loss = model(**b, labels=b["input_ids"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = adapter_state(model, method)
    if freeze_a:
        assert all(torch.equal(trained.layers[n].A, built.layers[n].A) for n in names)
    return torch.stack([(held[n] @ (trained.layers[n].delta() - built.layers[n].delta()).T).norm() for n in names])


def test_lora_null_moves_calibration_outputs_far_less_than_lora():
    lora = output_change("lora")
    frozen = output_change("lora-null", freeze_a=True)
    trained = output_change("lora-null")
    print(f"LoRA-Null/LoRA output change: {frozen.sum() / lora.sum():.4f} (A frozen), "
          f"{trained.sum() / lora.sum():.3f} (A trained)")  # fmt: skip
    assert frozen.sum() / lora.sum() < 0.05 and (frozen / lora).max() < 0.2
    assert trained.sum() / lora.sum() < 0.8


def test_freeze_a_is_recorded_and_keeps_a_out_of_training(tiny_dirs, text_file, tmp_path):
    run = build(
        BuildOptions.of(model=str(tiny_dirs["llama"]), method="lora-null", rank=4, freeze_a=True, data=str(text_file),
                        samples=8, seq_len=32, batch_size=4, out=str(tmp_path / "run"), device="cpu"),
        progress=False,
    ).run  # fmt: skip
    meta = json.loads((run.path / "run.json").read_text())
    assert meta["params"] == {"freeze_a": True} and run.method.freeze_a
    assert all(f.get("frozen_A") is True for f in meta["layers"].values())
    model = run.load_adapted().model
    named = dict(model.named_parameters())
    assert not any(p.requires_grad for n, p in named.items() if n.endswith("lora_A.weight"))
    assert all(p.requires_grad for n, p in named.items() if n.endswith("lora_B.weight"))


def test_rho_is_recorded_in_the_run(tiny_dirs, text_file, tmp_path):
    run = build(
        BuildOptions.of(model=str(tiny_dirs["llama"]), method="eva", rank=4, rho=1.5, data=str(text_file),
                        samples=8, seq_len=32, batch_size=4, out=str(tmp_path / "run"), device="cpu"),
        progress=False,
    ).run  # fmt: skip
    meta = json.loads((run.path / "run.json").read_text())
    assert meta["params"] == {"rho": 1.5, "freeze_a": False}
    assert Run.open(run.path).method.rho == 1.5 and not run.method.freeze_a
    assert max(f["rank"] for f in meta["layers"].values()) <= 6  # round(1.5 · 4)


# ------------------------------------------------------------------------------------------ bad input
def test_bad_input_is_one_line(tiny_dirs, text_file, tmp_path):
    common = dict(model=str(tiny_dirs["llama"]), rank=4, out=str(tmp_path / "run"), data=str(text_file))
    for method in ("corda-kpa", "lora-null"):  # even a truncation naming the row's own decomposition
        with pytest.raises(SvdadaptError, match=f"--truncation applies to .*, not to {method}"):
            BuildOptions.of(method=method, truncation="context", **common)
    with pytest.raises(SvdadaptError, match="--freeze-a applies to pissa, .*lora-null, not to lora"):
        BuildOptions.of(method="lora", freeze_a=True, **common)
    with pytest.raises(SvdadaptError, match="--freeze-a applies to .*, not to kasa"):
        BuildOptions.of(method="kasa", freeze_a=True, **common)
    with pytest.raises(SvdadaptError, match=r"--rho applies to eva, not to pissa"):
        BuildOptions.of(method="pissa", rho=2.0, **common)
    with pytest.raises(SvdadaptError, match="--rho must be at least 1"):
        BuildOptions.of(method="eva", rho=0.5, **common)
    for bad in (float("inf"), float("nan")):
        with pytest.raises(SvdadaptError, match="--rho must be a finite number"):
            BuildOptions.of(method="eva", rho=bad, **common)
    with pytest.raises(SvdadaptError, match="eva needs calibration covariances"):
        BuildOptions.of(method="eva", model=common["model"], rank=4, out=common["out"])


def test_eva_from_a_store_without_means_says_recalibrate(tiny_dirs, tmp_path):
    """A store written before means were kept (no "mean" in store.json) still serves every other row."""
    from svdadapt.models import load_model

    store = collect_covariances(load_model(str(tiny_dirs["llama"])).model, batches(2, 0))
    store.metadata["source"] = {"kind": "test"}
    store.save(tmp_path / "covs")
    index = tmp_path / "covs" / "store.json"
    meta = json.loads(index.read_text())
    for group in meta["groups"].values():
        del group["mean"]
    index.write_text(json.dumps(meta))
    old = CovarianceStore.load(tmp_path / "covs")
    name = old.modules[0]
    assert old.covariance(name).shape == (64, 64)
    with pytest.raises(SvdadaptError, match="holds no mean of the inputs .* recalibrate"):
        old.mean(name)
    common = dict(model=str(tiny_dirs["llama"]), rank=4, covariances=str(tmp_path / "covs"), device="cpu")
    with pytest.raises(SvdadaptError, match="holds no mean .*recalibrate \\(svdadapt calibrate\\)"):
        build(BuildOptions.of(method="eva", out=str(tmp_path / "eva"), **common), progress=False)
    build(BuildOptions.of(method="lora-null", out=str(tmp_path / "null"), **common), progress=False)  # C suffices


def test_compress_refuses_decompositions_of_the_inputs():
    from svdadapt.compress.sweep import check_decompositions

    for name in ("inputs", "null"):
        with pytest.raises(SvdadaptError, match=f"the {name} decomposition does not decompose all of W"):
            check_decompositions([name], None)
