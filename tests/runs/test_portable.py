"""A run is a portable artefact: copied anywhere (a folder with a space in its name, another working
directory), it loads with the documented stock-PEFT form — the base beside the adapter, the
tokenizer in the adapter folder — and reproduces svdadapt's logits, for every row of the methods
table and for LoRA built from a relative --model; nothing a run or an export writes names a path of
the machine that wrote it. Tolerance: as the all-rows test (two float32 computations, 3e-5)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from svdadapt.cli import main
from svdadapt.methods import TABLE, get_method
from svdadapt.runs import BASE_NOTE, Run

IDS = torch.randint(3, 512, (2, 24), generator=torch.Generator().manual_seed(0))
F32 = 3e-5

# The README's stock-PEFT form, run in a fresh process from another working directory.
STOCK_PEFT = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
run = sys.argv[1]
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run + "/base"), run + "/adapter")
tokenizer = AutoTokenizer.from_pretrained(run + "/adapter")
ids = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(input_ids=ids).logits, sys.argv[3])
print(tokenizer.decode(ids[0, :4]))
"""


def stock_peft_logits(run: Path, where: Path, tmp_path: Path) -> tuple[torch.Tensor, str]:
    torch.save(IDS, tmp_path / "ids.pt")
    (tmp_path / "load.py").write_text(STOCK_PEFT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, str(tmp_path / "load.py"), str(run), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt")],
        cwd=where, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(tmp_path / "logits.pt"), done.stdout.strip()


def svdadapt_logits(run: Path) -> torch.Tensor:
    with torch.no_grad():
        return Run.open(run).load_adapted().model(input_ids=IDS).logits


def rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def trained_stand_in(run: Path) -> None:
    """Move A and B as training would (so that B ≠ 0 everywhere), through the run's own update."""
    from svdadapt.runs import update_run

    opened = Run.open(run)
    adapters = opened.adapters()
    gen = torch.Generator().manual_seed(7)
    for layer in adapters.layers.values():
        layer.B = layer.B + 0.05 * torch.randn(layer.B.shape, generator=gen)
    update_run(opened, adapters, stage="trained")


@pytest.mark.parametrize(
    "method", [m.name for m in TABLE if m.quantized_init is None]
)  # cloq: tests/build/test_quantized.py
def test_a_moved_run_loads_in_stock_peft_from_anywhere(method, tiny_dirs, text_file, tmp_path):
    args = ["build", "--model", str(tiny_dirs["llama"]), "--method", method, "--rank", "4", "--alpha", "8",
            "--out", str(tmp_path / "built"), "--device", "cpu"]  # fmt: skip
    if get_method(method).needs:
        args += ["--data", str(text_file), "--samples", "8", "--seq-len", "32", "--batch-size", "4"]
    assert main(args) == 0
    trained_stand_in(tmp_path / "built")
    moved = tmp_path / "a folder with spaces" / "run copy"
    moved.parent.mkdir()
    shutil.move(tmp_path / "built", moved)  # mv: the building folder is gone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    logits, decoded = stock_peft_logits(moved, elsewhere, tmp_path)
    assert rel(logits, svdadapt_logits(moved)) < F32 and decoded
    config = json.loads((moved / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE_NOTE  # a local model: no hub id names it


def test_lora_built_from_a_relative_model_travels_with_its_base(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_dirs["llama"].parent)
    assert main(["build", "--model", "llama", "--method", "lora", "--rank", "4", "--out", str(tmp_path / "run"),
                 "--device", "cpu"]) == 0  # fmt: skip
    trained_stand_in(tmp_path / "run")
    moved = shutil.copytree(tmp_path / "run", tmp_path / "copied run")
    shutil.rmtree(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    logits, _ = stock_peft_logits(moved, tmp_path, tmp_path)
    assert rel(logits, svdadapt_logits(moved)) < F32
    assert not Run.open(moved).base_changed and (moved / "base" / "model.safetensors").is_file()


def test_nothing_a_run_or_export_writes_names_a_path_of_this_machine(tiny_dirs, text_file, tmp_path):
    store, run, export = tmp_path / "store", tmp_path / "run", tmp_path / "export"
    model = str(tiny_dirs["llama"])
    calib = ["--data", str(text_file), "--samples", "8", "--seq-len", "32", "--batch-size", "4", "--device", "cpu"]
    assert main(["calibrate", "--model", model, *calib, "--out", str(store)]) == 0
    assert main(["build", "--model", model, "--method", "corda-kpa", "--rank", "4", "--covariances", str(store),
                 "--out", str(run), "--device", "cpu"]) == 0  # fmt: skip
    assert main(["train", str(run), "--task", "sft", "--data", "polarity", "--train-samples", "8", "--eval-samples",
                 "2", "--max-length", "160", "--max-steps", "2", "--device", "cpu"]) == 0  # fmt: skip
    assert main(["eval", str(run), "--perplexity", "news", "--seq-len", "32", "--max-windows", "1"]) == 0
    assert main(["export", str(run), "--against-original", model, "--out", str(export)]) == 0
    machine = [str(tmp_path), str(Path(model).parent), str(Path.home())]
    for folder in (run, export):
        for file in folder.rglob("*"):
            if file.is_file() and file.suffix in (".json", ".txt", ".jinja", ".yaml", ""):
                text = file.read_text(errors="replace")
                assert not any(place in text for place in machine), (file, [p for p in machine if p in text])
