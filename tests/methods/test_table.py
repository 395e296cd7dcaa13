"""Every row of the methods table, on every tiny architecture (Llama, BERT, GPT-2's Conv1D), through
the commands a user runs: build → at init the adapted model is the original (KaSA: its truncated
base) → a few real training steps with the row's own loss, after which the row keeps its promises
(everything that trains moved, ΔΣ too where the row has one, A unchanged where frozen, the loss's
terms logged, its train parameters recorded) → merge equals the adapted forward, and the rank-2r
export against the untouched original reproduces the run in stock PEFT. Then a row defined outside
the package, with its own parameters and loss, goes through the command line the same way.

Tolerance: two float32 computations of one function (e.g. W_res·x + s·B·A·x against W·x) round
differently by ~1e-7 per operation, grown through two blocks to ~1e-5 of the outputs' range: 3e-5.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from svdadapt.adapters.init import INITS
from svdadapt.adapters.losses import LOSSES
from svdadapt.cli import main
from svdadapt.commands import BuildOptions, ExportOptions, MergeOptions, TrainOptions, build, export, merge, train
from svdadapt.methods import METHODS, TABLE, Base, get_method

from ..helpers import F32, IDS, rel
from ..helpers import logits as outputs

ROWS = [
    m.name for m in TABLE if m.quantized_init is None
]  # rows that build on a float base (cloq: tests/build/test_quantized.py)
CAUSAL = {"llama", "gpt2"}  # trained on instructions; BERT on polarity classification, with a new head


def body(model) -> torch.Tensor:
    """The last hidden states: what the adapters change, whatever head sits on top."""
    with torch.no_grad():
        return model(input_ids=IDS, output_hidden_states=True).hidden_states[-1]


def _built(method: str, kind: str, tiny_dirs, text_file, out, **params):
    values = dict(model=str(tiny_dirs[kind]), method=method, rank=4, alpha=8.0, out=str(out), device="cpu", **params)
    if kind not in CAUSAL:
        values.update(head="seq-cls", num_labels=2)
    if get_method(method).needs:
        values.update(data=str(text_file), samples=8, seq_len=32, batch_size=4)
    return build(BuildOptions.of(**values), progress=False).run


def _trained(run, kind: str, **params):
    task = {"task": "sft", "data": "polarity"} if kind in CAUSAL else {"task": "polarity"}
    opts = TrainOptions.of(run=str(run.path), **task, train_samples=8, eval_samples=2, max_length=160, batch_size=4,
                           max_steps=3, module_lr=5e-2, logging_steps=1, device="cpu", **params)  # fmt: skip
    return train(opts, progress=False).run


def _original(kind: str, tiny_dirs):
    if kind in CAUSAL:
        return AutoModelForCausalLM.from_pretrained(tiny_dirs[kind])
    return AutoModelForSequenceClassification.from_pretrained(tiny_dirs[kind], num_labels=2)


def _promises_kept(row, initial, trained, run) -> None:
    """What the row promises of a training: the factors that train moved, those frozen did not."""
    for name, layer in trained.layers.items():
        before = initial.layers[name]
        assert not torch.equal(layer.B, before.B), name
        assert torch.equal(layer.A, before.A) == row.freeze_a, name
        if row.diag:
            assert not torch.equal(layer.diag, before.diag), name
    log = run.meta["training"]["log"]
    values, keys = row.stage_values("train"), {key for entry in log for key in entry}
    weights = LOSSES[row.loss].weights if row.loss else {}
    weighed = {term for term, param in weights.items() if values[param]}
    assert weighed <= keys, weighed
    assert not (set(weights) - weighed) & keys  # a term weighed by zero is not computed, so not logged
    assert run.meta["training"].get("params", {}) == row.stage_values("train")


@pytest.mark.parametrize("kind", ["llama", "bert", "gpt2"])
@pytest.mark.parametrize("method", ROWS)
def test_every_row_builds_reproduces_trains_merges_and_exports(method, kind, tiny_dirs, text_file, tmp_path):
    row = get_method(method)
    run = _built(method, kind, tiny_dirs, text_file, tmp_path / "run")
    original = body(_original(kind, tiny_dirs))

    # at init: the original model, or for a truncating row its truncated base (the adapter adds nothing)
    at_init = body(run.load_adapted(initial=True).model)
    if row.base is Base.TRUNCATED:
        assert rel(at_init, body(run.load_base().model)) < F32
        assert rel(at_init, original) > 1e-3  # the base really is truncated
    else:
        assert rel(at_init, original) < F32
    assert run.base_changed == (row.changes_base or kind not in CAUSAL)  # a new head lives in the base

    # a few real steps with the row's own loss, then what the row promises
    trained = _trained(run, kind)
    _promises_kept(row, trained.adapters(initial=True), trained.adapters(), trained)
    adapted = outputs(trained.load_adapted().model)
    assert rel(body(trained.load_adapted().model), at_init) > 1e-4  # training moved the model

    # merging and the export against the original both reproduce the adapted forward
    merged = merge(MergeOptions(run=str(trained.path), out=str(tmp_path / "merged")), progress=False).out
    auto = AutoModelForCausalLM if kind in CAUSAL else AutoModelForSequenceClassification
    assert rel(outputs(auto.from_pretrained(merged)), adapted) < F32
    exported = export(
        ExportOptions(run=str(trained.path), against_original=str(tiny_dirs[kind]), out=str(tmp_path / "export")),
        progress=False,
    ).out
    peft = PeftModel.from_pretrained(_original(kind, tiny_dirs), exported)
    assert rel(outputs(peft), adapted) < F32


@pytest.mark.parametrize("method", [m.name for m in TABLE if any(p.name == "freeze_a" for p in m.params)])
def test_every_row_that_seeds_a_keeps_it_frozen_when_asked(method, tiny_dirs, text_file, tmp_path):
    run = _built(method, "llama", tiny_dirs, text_file, tmp_path / "run", freeze_a=True)
    row = run.method
    assert row.freeze_a and json.loads((run.path / "run.json").read_text())["params"]["freeze_a"] is True
    trained = _trained(run, "llama")
    _promises_kept(row, trained.adapters(initial=True), trained.adapters(), trained)


def test_a_row_that_draws_no_delta_sigma_or_lacks_its_loss_weights_cannot_be_made():
    from svdadapt.methods import BETA, GAMMA, Method, Take

    with pytest.raises(ValueError, match="draws no ΔΣ vector"):
        Method("bad", "ΔΣ on components", "svd", "plain", Take.BOTTOM, Base.RESIDUAL, diag=True)
    with pytest.raises(ValueError, match="needs a ΔΣ vector"):
        Method("bad", "KaSA's loss without ΔΣ", "lora", loss="kasa", params=(BETA, GAMMA))
    with pytest.raises(ValueError, match="weighted by beta, gamma"):
        Method("bad", "KaSA without its weights", "lora", "plain", Take.BOTTOM, Base.TRUNCATED, diag=True, loss="kasa")
    with pytest.raises(ValueError, match="cannot leave a residual base"):
        Method("bad", "an init that keeps W cannot leave a residual", "eva", "inputs", Take.TOP, Base.RESIDUAL)
    assert all(INITS[m.init].draws_diag for m in TABLE if m.diag)


# ------------------------------------------------------------------------------------------ a new row
SPREAD_HELP = "share of each taken component that goes to A (the rest to B)"


@pytest.fixture
def outside_row(monkeypatch):
    """A method defined as a user would, outside the package: its own init reading its own build
    parameter, its own loss weighted by its own train parameter; registered in the live tables."""
    from svdadapt.adapters import init as inits
    from svdadapt.adapters import losses
    from svdadapt.adapters.init import LayerAdapter, LayerInit
    from svdadapt.methods import Method, Param, Take

    def split_init(layer: LayerInit) -> LayerAdapter:
        share = layer.params["spread"]
        comp, s = layer.taken, layer.scaling
        S = (comp.S / s).clamp_min(0)  # (r,)
        A = ((S**share)[:, None] * comp.V.T).to(layer.dtype)  # (r, in)
        B = (comp.U * S ** (1 - share)).to(layer.dtype)  # (out, r)
        return LayerAdapter(A, B, layer.alpha, base_P=B.clone(), base_Q=A.clone(), base_scaling=s)

    def b_norm(adapters):
        return {"b_norm": sum(a.lora_B.weight.float().pow(2).sum() for a in adapters)}

    monkeypatch.setitem(inits.INITS, "split", inits.Init("split", split_init, (Base.RESIDUAL,), seeded_A=True))
    monkeypatch.setitem(losses.LOSSES, "b-norm", losses.Loss("b-norm", b_norm, {"b_norm": "lam"}))
    spread = Param("spread", float, 0.5, SPREAD_HELP)
    lam = Param("lam", float, 0.0, "weight of ‖B‖²", stage="train")
    row = Method("split-kpa", "bottom-r of W·C, split unevenly", "split", "context", Take.BOTTOM, Base.RESIDUAL,
                 loss="b-norm", params=(spread, lam))  # fmt: skip
    monkeypatch.setitem(METHODS, row.name, row)
    return row


def test_a_row_defined_outside_the_package_builds_trains_merges_and_exports(
    outside_row, capsys, tiny_dirs, text_file, tmp_path
):
    model = str(tiny_dirs["llama"])
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    assert "--spread" in capsys.readouterr().out  # its flag, from its declaration
    run_dir, args = tmp_path / "run", ["--device", "cpu"]
    calib = ["--data", str(text_file), "--samples", "8", "--seq-len", "32", "--batch-size", "4"]
    assert main(["build", "--model", model, "--method", "split-kpa", "--rank", "4", "--alpha", "8", "--spread",
                 "0.25", *calib, "--out", str(run_dir), *args]) == 0  # fmt: skip
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["method"] == "split-kpa" and meta["params"] == {"spread": 0.25}  # its record, build parameters only
    from svdadapt.runs import Run

    run = Run.open(run_dir)
    assert run.method.value("spread") == 0.25
    layer = next(iter(run.adapters().layers.values()))
    assert rel(body(run.load_adapted().model), body(AutoModelForCausalLM.from_pretrained(model))) < F32
    assert not torch.allclose(layer.A.norm(dim=1), layer.B.norm(dim=0))  # uneven split, as spread asks

    capsys.readouterr()
    assert main(["train", str(run_dir), "--lam", "0.5", "--spread", "0.3", "--task", "sft", "--data", "polarity",
                 *args]) == 2  # a build parameter on a built run  # fmt: skip
    assert "--spread" in capsys.readouterr().err
    assert main(["train", str(run_dir), "--lam", "0.5", "--task", "sft", "--data", "polarity", "--train-samples", "8",
                 "--eval-samples", "2", "--max-length", "160", "--max-steps", "3", "--module-lr", "0.05",
                 "--logging-steps", "1", *args]) == 0  # fmt: skip
    trained = Run.open(run_dir)
    _promises_kept(trained.method.configured(lam=0.5), trained.adapters(initial=True), trained.adapters(), trained)
    assert trained.meta["training"]["params"] == {"lam": 0.5}

    adapted = outputs(trained.load_adapted().model)
    assert main(["merge", str(run_dir), "--out", str(tmp_path / "merged")]) == 0
    assert rel(outputs(AutoModelForCausalLM.from_pretrained(tmp_path / "merged")), adapted) < F32
    assert main(["export", str(run_dir), "--against-original", model, "--out", str(tmp_path / "x")]) == 0
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), tmp_path / "x")
    assert rel(outputs(peft), adapted) < F32

    capsys.readouterr()
    assert main(["build", "--model", model, "--method", "lora", "--rank", "4", "--spread", "0.5",
                 "--out", str(tmp_path / "r2"), *args]) == 2  # fmt: skip
    assert "--spread applies to split-kpa, not to lora" in capsys.readouterr().err


def test_a_new_method_is_one_registered_init_and_one_row(tiny_dirs, text_file, tmp_path, monkeypatch):
    """What the README's "add a method" paragraph shows: nothing else changes, and build, the
    identity at init and the export against the original work for the new row."""
    from svdadapt.adapters import init as inits
    from svdadapt.adapters.init import LayerAdapter, LayerInit
    from svdadapt.methods import Method, Take

    def vectors_a(layer: LayerInit):
        A = layer.taken.V.T.to(layer.dtype)  # (r, in)
        B = A.new_zeros(layer.W.shape[0], layer.rank)  # (out, r)
        return LayerAdapter(A, B, layer.alpha)

    monkeypatch.setitem(inits.INITS, "vectors-A", inits.Init("vectors-A", vectors_a, (Base.ORIGINAL,)))
    row = Method("top-vectors", "A from the top-r right singular vectors of W·C", "vectors-A", "context", Take.TOP)
    monkeypatch.setitem(METHODS, row.name, row)

    run = _built("top-vectors", "llama", tiny_dirs, text_file, tmp_path / "run")
    original = outputs(AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]))
    assert not run.base_changed and rel(outputs(run.load_adapted().model), original) < F32
    name, layer = next(iter(run.adapters().layers.items()))
    assert layer.A.shape == (4, 64) and not layer.B.any(), name
    trained = _trained(run, "llama")
    exported = export(
        ExportOptions(run=str(trained.path), against_original=str(tiny_dirs["llama"]), out=str(tmp_path / "x")),
        progress=False,
    ).out
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]), exported)
    assert rel(outputs(peft), outputs(trained.load_adapted().model)) < F32
