"""Every row of the methods table, on every tiny architecture (Llama, BERT, GPT-2's Conv1D), through
the commands a user runs: build → at init the adapted model is the original (KaSA: its truncated
base) → after a stand-in for training, merge equals the adapted forward, and the rank-2r export
against the untouched original reproduces the run in stock PEFT.

Tolerance: two float32 computations of one function (e.g. W_res·x + s·B·A·x against W·x) round
differently by ~1e-7 per operation, grown through two blocks to ~1e-5 of the outputs' range: 3e-5.
"""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModel, AutoModelForCausalLM

from svdadapt.commands import BuildOptions, ExportOptions, MergeOptions, build, export, merge
from svdadapt.methods import TABLE, Base, get_method
from svdadapt.runs import Run, update_run

AUTO = {"llama": AutoModelForCausalLM, "gpt2": AutoModelForCausalLM, "bert": AutoModel}
IDS = torch.randint(3, 512, (2, 24), generator=torch.Generator().manual_seed(0))
F32 = 3e-5
ROWS = [(m.name, None) for m in TABLE] + [("kasa", "context")]  # every row, and KaSA's other truncation


def outputs(model) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=IDS)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _trained_stand_in(run: Run) -> Run:
    """Move every trainable factor (A, B, ΔΣ) as training would, and record the run as trained."""
    adapters = run.adapters()
    gen = torch.Generator().manual_seed(7)
    for layer in adapters.layers.values():
        layer.A = layer.A + 0.05 * torch.randn(layer.A.shape, generator=gen)
        layer.B = layer.B + 0.05 * torch.randn(layer.B.shape, generator=gen)
        if layer.diag is not None:
            layer.diag = layer.diag + 0.05 * torch.randn(layer.diag.shape, generator=gen)
    return update_run(run, adapters, stage="trained")


@pytest.mark.parametrize("kind", ["llama", "bert", "gpt2"])
@pytest.mark.parametrize(("method", "truncation"), ROWS, ids=lambda v: v or "")
def test_every_row_builds_reproduces_merges_and_exports(method, truncation, kind, tiny_dirs, text_file, tmp_path):
    row = get_method(method, truncation)
    values = dict(model=str(tiny_dirs[kind]), method=method, truncation=truncation, rank=4, alpha=8.0,
                  out=str(tmp_path / "run"), device="cpu")  # fmt: skip
    if row.needs:
        values.update(data=str(text_file), samples=8, seq_len=32, batch_size=4)
    run = build(BuildOptions.of(**values), progress=False).run
    original = outputs(AUTO[kind].from_pretrained(tiny_dirs[kind]))

    # at init: the original model, or for a truncating row its truncated base (the adapter adds nothing)
    at_init = outputs(run.load_adapted(initial=True).model)
    if row.base is Base.TRUNCATED:
        assert rel(at_init, outputs(run.load_base().model)) < F32
        assert rel(at_init, original) > 1e-3  # the base really is truncated
    else:
        assert rel(at_init, original) < F32
    assert run.base_changed == row.changes_base

    # trained: merging and the export against the original both reproduce the adapted forward
    trained = _trained_stand_in(run)
    adapted = outputs(trained.load_adapted().model)
    assert rel(adapted, at_init) > 1e-3  # the stand-in moved the model
    merged = merge(MergeOptions(run=str(trained.path), out=str(tmp_path / "merged")), progress=False).out
    assert rel(outputs(AUTO[kind].from_pretrained(merged)), adapted) < F32
    exported = export(
        ExportOptions(run=str(trained.path), against_original=str(tiny_dirs[kind]), out=str(tmp_path / "export")),
        progress=False,
    ).out
    peft = PeftModel.from_pretrained(AUTO[kind].from_pretrained(tiny_dirs[kind]), exported)
    assert rel(outputs(peft), adapted) < F32


def test_a_new_method_is_one_registered_init_and_one_row(tiny_dirs, text_file, tmp_path, monkeypatch):
    """What the README's "add a method" paragraph shows: nothing else changes, and build, the
    identity at init and the export against the original work for the new row."""
    from svdadapt.adapters import init as inits
    from svdadapt.adapters.init import LayerAdapter, LayerInit
    from svdadapt.methods import METHODS, Method, Take

    def vectors_a(layer: LayerInit):
        A = layer.taken.V.T.to(layer.dtype)  # (r, in)
        B = A.new_zeros(layer.W.shape[0], layer.rank)  # (out, r)
        return LayerAdapter(A, B, layer.alpha)

    monkeypatch.setitem(inits.INITS, "vectors-A", inits.Init("vectors-A", vectors_a, (Base.ORIGINAL,)))
    row = Method("top-vectors", "A from the top-r right singular vectors of W·C", "vectors-A", "context", Take.TOP)
    monkeypatch.setitem(METHODS, row.name, row)
    with pytest.raises(ValueError, match="cannot leave a residual base"):
        Method("bad", "an init that keeps W cannot leave a residual", "vectors-A", "plain", Take.TOP, Base.RESIDUAL)

    run = build(
        BuildOptions.of(model=str(tiny_dirs["llama"]), method="top-vectors", rank=4, out=str(tmp_path / "run"),
                        data=str(text_file), samples=8, seq_len=32, batch_size=4, device="cpu"),
        progress=False,
    ).run  # fmt: skip
    original = outputs(AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]))
    assert not run.base_changed and rel(outputs(run.load_adapted().model), original) < F32
    name, layer = next(iter(run.adapters().layers.items()))
    assert layer.A.shape == (4, 64) and not layer.B.any(), name
    trained = _trained_stand_in(run)
    exported = export(
        ExportOptions(run=str(trained.path), against_original=str(tiny_dirs["llama"]), out=str(tmp_path / "x")),
        progress=False,
    ).out
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]), exported)
    assert rel(outputs(peft), outputs(trained.load_adapted().model)) < F32
