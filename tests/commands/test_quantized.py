"""The commands on a quantized run (``build --quantize``): train (svdadapt's adapters and a stock
PeftModel on the 4-bit base), merge (a float model), export --against-original (the best rank-2r
LoRA, its error said), eval and generate; and every bad input as one line."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("bitsandbytes", reason="quantized bases need bitsandbytes (svdadapt[quant])")

from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from svdadapt import backend  # noqa: E402
from svdadapt.peft_handle import peft_model  # noqa: E402
from svdadapt.runs import Run, copy_run  # noqa: E402

from ..helpers import F32, IDS, bad, logits, ok, rel  # noqa: E402

TRAIN = ["--task", "sft", "--data", "polarity", "--train-samples", "8", "--eval-samples", "2", "--max-length", "160",
         "--batch-size", "4", "--max-steps", "3", "--module-lr", "5e-2", "--device", "cpu"]  # fmt: skip


def build_args(tiny_dirs, out, method="pissa", *extra):
    return ["build", "--model", tiny_dirs["llama"], "--method", method, "--rank", "4", "--alpha", "8", "--device",
            "cpu", "--out", out, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tiny_dirs, tmp_path_factory):
    """A pissa run of the tiny Llama on an nf4 base, the same on a float base, and the nf4 one trained."""
    import builtins  # noqa: F401  (the CLI in-process, as a user runs it)

    from svdadapt.cli import main

    root = tmp_path_factory.mktemp("qruns")
    assert main([str(a) for a in build_args(tiny_dirs, root / "q", "pissa", "--quantize", "nf4")]) == 0
    assert main([str(a) for a in build_args(tiny_dirs, root / "f", "pissa")]) == 0
    trained = copy_run(Run.open(root / "q"), root / "trained")
    assert main([str(a) for a in ["train", trained.path, *TRAIN]]) == 0
    return {"q": Run.open(root / "q"), "f": Run.open(root / "f"), "trained": Run.open(root / "trained")}


def test_training_on_the_4bit_run_moves_the_adapter_and_keeps_the_base(runs):
    trained, built = runs["trained"], runs["q"]
    assert trained.meta["stage"] == "trained" and trained.quantization == built.quantization
    before, after = built.adapters().layers, trained.adapters().layers
    assert all(not torch.equal(before[n].B, after[n].B) for n in before)  # every layer's B moved
    results = json.loads((trained.path / "train_results.json").read_text())
    assert torch.isfinite(torch.tensor(results["train_loss"]))
    assert rel(logits(trained.load_adapted().model), logits(built.load_adapted().model)) > 1e-4
    assert type(trained.load_base().model.get_submodule("model.layers.0.self_attn.q_proj")).__name__ == "Linear4bit"


def test_train_builds_a_quantized_run_with_one_flag(capsys, tiny_dirs, tmp_path):
    args = ["train", "--model", tiny_dirs["llama"], "--method", "lora", "--rank", "4", "--quantize", "nf4",
            "--out", tmp_path / "run", *TRAIN]  # fmt: skip
    ok(capsys, *args)
    run = Run.open(tmp_path / "run")
    assert run.quantization["kind"] == "nf4" and run.meta["stage"] == "trained"


def test_a_stock_peft_model_of_the_4bit_run_trains(runs):
    from peft.tuners.lora.bnb import Linear4bit as PeftLinear4bit

    model = peft_model(runs["q"])
    assert isinstance(model.get_submodule("base_model.model.model.layers.0.self_attn.q_proj"), PeftLinear4bit)
    model.eval()
    assert rel(logits(model), logits(runs["q"].load_adapted().model)) < 1e-6  # the same layers, another order
    with torch.no_grad():  # the eval-mode forward that repacks where the trap is open: closed by the loader
        model(input_ids=IDS)
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert len(grads) == 2 * 14 and all(g is not None and bool(g.abs().sum() > 0) for g in grads.values())


def test_merge_writes_a_float_model_of_the_dequantized_base_plus_adapter(capsys, runs, tmp_path):
    trained = runs["trained"]
    ok(capsys, "merge", trained.path, "--out", tmp_path / "merged")
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert type(merged.get_submodule("model.layers.0.self_attn.q_proj")).__name__ == "Linear"
    # the same function as the 4-bit run: Q·x + s·B·A·x against (Q + s·B·A)·x, both in float32
    assert rel(logits(merged), logits(trained.load_adapted().model)) < F32


def test_export_against_the_original_is_the_best_rank_2r_lora_and_says_its_error(capsys, runs, tiny_dirs, tmp_path):
    trained = runs["trained"]
    out = ok(capsys, "export", trained.path, "--against-original", tiny_dirs["llama"], "--out", tmp_path / "x")
    assert "approximate: the quantized base makes D = W_q + s·B·A − W full rank" in out
    record = json.loads((tmp_path / "x" / "svdadapt_approximation.json").read_text())
    assert set(record["layers"]) == set(trained.meta["layers"])
    # down_proj's base stays float: D = s(B·A − B₀·A₀) is of rank 2r, all but float32 rounding kept;
    # on the 4-bit layers most of Q − W is spread over every direction: a few % of the weight is left
    # (measured 0.05–0.07 of ‖W_q + s·B·A‖, 0.7–0.8 of ‖D‖)
    layers = record["layers"]
    assert all(e["of_weight"] < 1e-6 for n, e in layers.items() if n.endswith("down_proj"))
    assert all(0.01 < e["of_weight"] < 0.2 and e["of_difference"] < 1 for n, e in layers.items()
               if not n.endswith("down_proj"))  # fmt: skip
    config = json.loads((tmp_path / "x" / "adapter_config.json").read_text())
    assert config["r"] == 8  # 2r
    exported = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]), tmp_path / "x")
    original = logits(AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]))
    run_logits = logits(trained.load_adapted().model)
    # the export is nearer the run than the original is (it carries the training and part of Q − W)
    assert rel(logits(exported), run_logits) < rel(original, run_logits)


def test_eval_and_generate_run_on_the_4bit_run(capsys, runs, tmp_path):
    from svdadapt.assets import news_text

    text = tmp_path / "text.txt"
    text.write_text(news_text()[:4000])
    out = ok(capsys, "eval", runs["trained"].path, "--perplexity", text, "--seq-len", "64", "--max-windows", "2",
             "--out", tmp_path / "eval")  # fmt: skip
    assert "perplexity" in out
    out = ok(capsys, "generate", runs["trained"].path, "--prompt", "The film", "--max-new-tokens", "4")
    assert "4 new tokens" in out


def test_the_quantized_run_is_nearer_the_float_run_at_init_than_a_qlora_one(capsys, runs, tiny_dirs, tmp_path):
    """merge's distance to the float run, as the README reports it: the quantized pissa run at init
    against the float pissa run (identical to the original at init)."""
    ok(capsys, *build_args(tiny_dirs, tmp_path / "qlora", "lora", "--quantize", "nf4"))
    float_logits = logits(runs["f"].load_adapted().model)
    qpissa = rel(logits(runs["q"].load_adapted().model), float_logits)
    qlora = rel(logits(Run.open(tmp_path / "qlora").load_adapted().model), float_logits)
    assert 0 < qpissa < qlora


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--quantize", "nf4", "--quant-iters", "-1"], "--quant-iters must be between 0 and 100"),
        (["--quantize", "nf4", "--quant-iters", "101"], "--quant-iters must be between 0 and 100"),
        (["--quant-iters", "2"], "--quant-iters refines a quantized base: give --quantize"),
    ],
)
def test_bad_quantize_options_are_one_line(extra, says, capsys, tiny_dirs, tmp_path):
    assert says in bad(capsys, *build_args(tiny_dirs, tmp_path / "run", "pissa", *extra))
    assert not (tmp_path / "run").exists()


def test_an_unknown_kind_is_refused_by_the_parser(capsys, tiny_dirs, tmp_path):
    from svdadapt.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in build_args(tiny_dirs, tmp_path / "run", "pissa", "--quantize", "nf5")])
    assert exc.value.code == 2
    assert "invalid choice: 'nf5' (choose from 'nf4', 'fp4', 'int8')" in capsys.readouterr().err


def test_rows_that_cannot_take_the_quantize_options_say_why(capsys, tiny_dirs, tmp_path):
    assert "cloq initialises the adapter on a quantized base: give --quantize" in bad(
        capsys, *build_args(tiny_dirs, tmp_path / "a", "cloq")
    )
    assert "cloq needs calibration covariances" in bad(capsys, *build_args(tiny_dirs, tmp_path / "b", "cloq",
                                                                           "--quantize", "nf4"))  # fmt: skip
    assert "--quant-iters cannot refine kasa" in bad(
        capsys, *build_args(tiny_dirs, tmp_path / "c", "kasa", "--quantize", "nf4", "--quant-iters", "2")
    )


def test_quantize_without_bitsandbytes_is_one_line(capsys, tiny_dirs, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name.split(".")[0] == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    line = bad(capsys, *build_args(tiny_dirs, tmp_path / "run", "pissa", "--quantize", "nf4"))
    assert "--quantize nf4 needs bitsandbytes, which is not installed: pip install 'svdadapt[quant]'" in line


def test_a_layer_kind_bitsandbytes_cannot_quantize_stays_float_said_once(capsys, tiny_dirs, tmp_path):
    out = ok(capsys, "build", "--model", tiny_dirs["gpt2"], "--method", "pissa", "--rank", "4", "--device", "cpu",
             "--quantize", "nf4", "--out", tmp_path / "run")  # fmt: skip
    notes = [line for line in out.splitlines() if "bitsandbytes cannot quantize" in line]
    assert len(notes) == 1 and "Conv1D" in notes[0]
    run = Run.open(tmp_path / "run")
    assert not any(backend.is_quantized_layer(m) for m in run.load_base().model.modules())
    assert run.quantization["layers"] == {}  # no layer was quantized: every base is the float residual
    assert rel(logits(run.load_adapted(initial=True).model), logits(AutoModelForCausalLM.from_pretrained(
        tiny_dirs["gpt2"]))) < F32  # fmt: skip


def test_commands_that_cannot_use_a_quantized_base_say_why(capsys, runs, tiny_dirs, tmp_path):
    line = bad(capsys, "build", "--model", runs["q"].path / "base", "--method", "pissa", "--rank", "4", "--device",
               "cpu", "--out", tmp_path / "run")  # fmt: skip
    assert "is a quantized checkpoint (nf4); building a run needs the float weights: pass the float original" in line
    base = runs["q"].path / "base"
    line = bad(capsys, "calibrate", "--model", base, "--data", "news", "--samples", "2", "--out", tmp_path / "store")
    assert "calibrating (for a build) needs the float weights" in line
    line = bad(capsys, "compress", "--model", base, "--decomposition", "plain", "--out", tmp_path / "compressed")
    assert "compressing needs the float weights" in line


def test_peft_kasa_on_a_quantized_base_is_one_line(capsys, tiny_dirs, tmp_path):
    from svdadapt.errors import SvdadaptError

    ok(capsys, *build_args(tiny_dirs, tmp_path / "kasa", "kasa", "--quantize", "nf4"))
    with pytest.raises(SvdadaptError, match="PEFT's KaSA variant cannot wrap a quantized base") as refused:
        peft_model(Run.open(tmp_path / "kasa"))
    assert "\n" not in str(refused.value)
