"""A run as an in-memory peft.PeftModel for the trainers people use, and back: every row's handle
computes what svdadapt's own model computes; KaSA keeps ΔΣ as a trainable vector and its
regularizer in the model's loss; a few TRL SFTTrainer steps on the handle, saved as TRL saves them,
come back through --adapter, and the rank-2r export against the untouched original reproduces the
trained handle in stock PEFT. Tolerance: two float32 computations of one function, 3e-5 (as the
all-rows test)."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from svdadapt.adapters.losses import LOSSES
from svdadapt.cli import main
from svdadapt.commands import BuildOptions, build
from svdadapt.methods import TABLE, get_method
from svdadapt.peft_handle import peft_layers, peft_model

IDS = torch.randint(3, 512, (2, 24), generator=torch.Generator().manual_seed(0))
F32 = 3e-5


def rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def built(method: str, tiny_dirs, text_file, out, **params):
    values = dict(model=str(tiny_dirs["llama"]), method=method, rank=4, alpha=8.0, out=str(out), device="cpu", **params)
    if get_method(method).needs:
        values.update(data=str(text_file), samples=8, seq_len=32, batch_size=4)
    run = build(BuildOptions.of(**values), progress=False).run
    adapters = run.adapters()  # B ≠ 0, so that the adapter's part of the output counts
    gen = torch.Generator().manual_seed(3)
    for layer in adapters.layers.values():
        layer.B = layer.B + 0.05 * torch.randn(layer.B.shape, generator=gen)
    from svdadapt.runs import update_run

    return update_run(run, adapters, stage="trained")


@pytest.mark.parametrize(
    "method", [m.name for m in TABLE if m.quantized_init is None]
)  # cloq: tests/commands/test_quantized.py
def test_every_rows_handle_computes_what_svdadapt_computes(method, tiny_dirs, text_file, tmp_path):
    run = built(method, tiny_dirs, text_file, tmp_path / "run")
    handle = peft_model(run)
    assert isinstance(handle, PeftModel)
    assert rel(logits(handle), logits(run.load_adapted().model)) < F32
    trainable = {n for n, p in handle.named_parameters() if p.requires_grad}
    assert any("lora_B" in n for n in trainable) and not any("base_layer" in n for n in trainable)
    assert any("lora_diag" in n for n in trainable) == get_method(method).diag


def test_kasa_keeps_its_truncated_base_its_delta_sigma_and_its_loss(tiny_dirs, text_file, tmp_path):
    run = built("kasa-context", tiny_dirs, text_file, tmp_path / "run")
    handle = peft_model(run, beta=0.5, gamma=0.25)
    base = AutoModelForCausalLM.from_pretrained(run.path / "base")
    logits(handle)  # a forward: PEFT would apply a deferred truncation here
    name = "model.layers.0.self_attn.q_proj"
    layer = handle.base_model.model.get_submodule(name)
    assert torch.equal(layer.base_layer.weight, base.get_submodule(name).weight)  # RUN/base, not truncated again
    assert torch.equal(layer.lora_diag["default"].detach(), run.adapters().layers[name].diag)
    handle.train()
    with_loss = handle(input_ids=IDS, labels=IDS).loss
    handle.eval()
    task = handle(input_ids=IDS, labels=IDS).loss
    regularizer = LOSSES["kasa"].regularizer({"beta": 0.5, "gamma": 0.25})
    expected, _ = regularizer.over(peft_layers(handle))
    assert torch.allclose(with_loss - task, expected, rtol=1e-5)


def test_a_frozen_a_stays_out_of_training(tiny_dirs, text_file, tmp_path):
    handle = peft_model(built("lora-null", tiny_dirs, text_file, tmp_path / "run", freeze_a=True))
    trainable = {n for n, p in handle.named_parameters() if p.requires_grad}
    assert trainable and not any("lora_A" in n for n in trainable)


@pytest.mark.parametrize("method", ["corda-kpa", "kasa"])
def test_trl_trains_the_handle_and_the_adapter_comes_back_exact(method, tiny_dirs, text_file, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    run = built(method, tiny_dirs, text_file, tmp_path / "run")
    handle = peft_model(run)
    tokenizer = run.load_base().tokenizer
    texts = [{"text": f"Review {i}: the film was {'good' if i % 2 else 'bad'}."} for i in range(8)]
    config = SFTConfig(
        output_dir=str(tmp_path / "trl"), max_steps=3, per_device_train_batch_size=4, learning_rate=5e-2,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, max_length=48, seed=0, bf16=False,
    )  # fmt: skip
    trainer = SFTTrainer(model=handle, args=config, train_dataset=Dataset.from_list(texts), processing_class=tokenizer)
    before = {n: p.detach().clone() for n, p in handle.named_parameters() if p.requires_grad}
    trainer.train()
    moved = [n for n, p in handle.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in moved)
    if method == "kasa":
        assert any("lora_diag" in n for n in moved)
    trainer.save_model(str(tmp_path / "trained"))
    trained = logits(handle)

    model = str(tiny_dirs["llama"])
    assert main(["export", str(run.path), "--adapter", str(tmp_path / "trained"), "--against-original", model,
                 "--out", str(tmp_path / "for-original")]) == 0  # fmt: skip
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), str(tmp_path / "for-original"))
    assert rel(logits(stock), trained) < F32
    assert main(["merge", str(run.path), "--adapter", str(tmp_path / "trained"), "--out", str(tmp_path / "m")]) == 0
    assert rel(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "m")), trained) < F32
    assert main(["eval", str(run.path), "--adapter", str(tmp_path / "trained"), "--perplexity", "news",
                 "--seq-len", "32", "--max-windows", "1", "--out", str(tmp_path / "e.json")]) == 0  # fmt: skip


def test_an_adapter_of_another_run_is_one_line(capsys, tiny_dirs, text_file, tmp_path):
    run = built("pissa", tiny_dirs, text_file, tmp_path / "run")
    other = built("pissa", tiny_dirs, text_file, tmp_path / "other", rank_pattern="q_proj=2")
    code = main(["merge", str(run.path), "--adapter", str(other.path / "adapter"), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and "no LoRA of this run's shape" in err and not (tmp_path / "m").exists()
    code = main(["merge", str(run.path), "--adapter", str(tmp_path), "--out", str(tmp_path / "m")])
    assert code == 2 and "is not a PEFT adapter" in capsys.readouterr().err
