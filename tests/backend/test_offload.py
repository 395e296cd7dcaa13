"""Offloaded calibration and builds (``--offload``): the model stays memory-mapped as stored and each
block comes to the compute device, in the compute dtype, only while it works.

On the CPU the compute dtype is float32. An offloaded bfloat16 checkpoint therefore computes every
block from the same float32 values an in-place float32 load holds, in the same order: the store and
the adapters are bit-identical (asserted exactly). The residual base differs only in being written
in the checkpoint's own dtype: it equals the in-place float32 base rounded to bfloat16.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from svdadapt import CovarianceStore
from svdadapt.assets import save_tiny_model
from svdadapt.backend import HiddenStates, Placement, on_compute, place
from svdadapt.backend.kernels import fp64_at_rate
from svdadapt.cli import main
from svdadapt.models import load_model
from svdadapt.runs import Run


@pytest.fixture(scope="module")
def bf16_llama(tmp_path_factory):
    """A tiny llama saved in bfloat16 (weights as big checkpoints ship them)."""
    path = save_tiny_model("llama", tmp_path_factory.mktemp("bf16") / "llama")
    model = load_model(str(path)).model.to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    return path


def common(model, text_file, out):
    return ["--model", str(model), "--data", str(text_file), "--samples", "8", "--seq-len", "32",
            "--batch-size", "2", "--device", "cpu", "--out", str(out)]  # fmt: skip


def test_offloaded_load_keeps_the_checkpoint_dtype_mapped(bf16_llama):
    loaded = load_model(str(bf16_llama), offload=True)
    assert loaded.placement.offloaded and loaded.placement.mapped
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    block = loaded.model.model.layers[0]
    before = {n: (p.data_ptr(), p.dtype) for n, p in block.named_parameters()}
    with on_compute(block, loaded.placement):
        assert {p.dtype for p in block.parameters()} == {torch.float32}
    after = dict(block.named_parameters())
    assert {n: (p.data_ptr(), p.dtype) for n, p in after.items()} == before  # the originals, nothing copied back


def test_offloaded_calibration_equals_in_place(bf16_llama, text_file, tmp_path):
    assert main(["calibrate", *common(bf16_llama, text_file, tmp_path / "in-place"), "--offload", "off"]) == 0
    assert main(["calibrate", *common(bf16_llama, text_file, tmp_path / "offloaded"), "--offload"]) == 0
    spill = tmp_path / "spill"
    assert main(["calibrate", *common(bf16_llama, text_file, tmp_path / "spilled"), "--offload",
                 "--hidden-states-dir", str(spill)]) == 0  # fmt: skip
    assert spill.is_dir() and not any(spill.iterdir())  # the memory-mapped states were removed
    one = CovarianceStore.load(tmp_path / "in-place")
    for other in ("offloaded", "spilled"):
        two = CovarianceStore.load(tmp_path / other)
        assert two.metadata["model"]["fingerprint"] == one.metadata["model"]["fingerprint"]
        for name in one.modules:
            assert torch.equal(two.covariance(name), one.covariance(name)), (other, name)
            assert torch.equal(two.mean_abs(name), one.mean_abs(name)), (other, name)


def test_offloaded_build_equals_in_place(bf16_llama, text_file, tmp_path):
    args = ["build", "--method", "corda-kpa", "--rank", "4"]
    assert main([*args, *common(bf16_llama, text_file, tmp_path / "in-place"), "--offload", "off"]) == 0
    assert main([*args, *common(bf16_llama, text_file, tmp_path / "offloaded"), "--offload"]) == 0
    one, two = Run.open(tmp_path / "in-place"), Run.open(tmp_path / "offloaded")
    a, b = one.adapters(), two.adapters()
    for name, layer in a.layers.items():
        assert torch.equal(b.layers[name].A, layer.A) and torch.equal(b.layers[name].B, layer.B), name
    in_place = load_file(tmp_path / "in-place" / "base" / "model.safetensors")  # float32, as loaded
    offloaded = load_file(tmp_path / "offloaded" / "base" / "model.safetensors")  # bfloat16, as stored
    assert {t.dtype for t in offloaded.values()} == {torch.bfloat16}
    for key, value in in_place.items():
        assert torch.equal(offloaded[key], value.to(torch.bfloat16)), key
    assert json.loads((tmp_path / "offloaded" / "base" / "config.json").read_text())["dtype"] == "bfloat16"
    two.load_adapted()  # the run loads and its base plus adapter is the model it was built from


def test_offload_is_chosen_when_the_model_does_not_fit(bf16_llama, tiny_dirs, monkeypatch):
    import svdadapt.backend.placement as placement

    assert not place(str(tiny_dirs["llama"]), "cpu", None).offloaded  # a tiny float32 model fits, as stored
    converted = place(str(bf16_llama), "cpu", None)  # in place would convert it all to float32: offloaded holds less
    assert converted.offloaded and converted.dtype == torch.float32 and "convert" in converted.reason
    monkeypatch.setattr(placement, "free_memory", lambda device: 1024)
    chosen = place(str(bf16_llama), "cpu", None)
    assert chosen.offloaded and chosen.dtype == torch.float32 and "GiB free" in chosen.reason
    assert not place(str(bf16_llama), "cpu", False).offloaded  # never when told not to


def test_offload_off_keeps_a_model_in_place_that_auto_would_offload(
    bf16_llama, text_file, tmp_path, monkeypatch, capsys
):
    """--offload auto|on|off (a bare --offload is on): with the device's free memory made tiny, auto
    offloads (and so refuses a target outside the blocks), off loads the model whole and calibrates it."""
    import svdadapt.backend.placement as placement

    monkeypatch.setattr(placement, "free_memory", lambda device: 1024)
    args = ["calibrate", "--targets", r"re:.*(q_proj|lm_head)$"]
    for choice in ([], ["--offload"], ["--offload", "on"], ["--offload", "auto"]):  # refused before writing
        assert main([*args, *common(bf16_llama, text_file, tmp_path / "refused"), *choice]) != 0, choice
        assert "block by block" in capsys.readouterr().err
    assert main([*args, *common(bf16_llama, text_file, tmp_path / "whole"), "--offload", "off"]) == 0
    assert "lm_head" in CovarianceStore.load(tmp_path / "whole").modules
    assert not (tmp_path / "refused").exists()
    with pytest.raises(SystemExit):  # argparse's usage error
        main([*args, *common(bf16_llama, text_file, tmp_path / "x"), "--offload", "maybe"])
    assert "invalid choice: 'maybe'" in capsys.readouterr().err


def test_offload_needs_targets_inside_the_blocks(bf16_llama, text_file, tmp_path, capsys):
    status = main(["calibrate", *common(bf16_llama, text_file, tmp_path / "out"), "--offload",
                   "--targets", "re:.*(q_proj|lm_head)$"])  # fmt: skip
    assert status != 0
    assert "block by block" in capsys.readouterr().err


def test_hidden_states_spill_to_files_and_back(tmp_path):
    states = HiddenStates(Placement(torch.device("cpu"), offloaded=True), count=2, directory=tmp_path / "h")
    with states:
        first = states.keep(0, torch.arange(6.0).view(2, 3))
        again = states.keep(0, first * 2)  # the next block's output overwrites the slot in place
        assert again.data_ptr() == first.data_ptr() and torch.equal(again, torch.arange(6.0).view(2, 3) * 2)
        assert len(list((tmp_path / "h").iterdir())) == 1
    assert not any((tmp_path / "h").iterdir())


def test_float64_decompositions_stay_on_gpus_that_compute_it_at_rate():
    assert fp64_at_rate((9, 0)) and fp64_at_rate((8, 0))  # H100/H200, A100
    assert not fp64_at_rate((8, 9)) and not fp64_at_rate((8, 6))  # L4/RTX 4090, RTX 3090: decompose on the host


def test_offloaded_compression_sweep_equals_in_place(bf16_llama, tmp_path):
    """Offloaded, each point's changed weights exist only in the block's copy on its way through;
    the perplexities equal the in-place sweep's (same float32 arithmetic per block: rtol 1e-6)."""
    args = ["compress", "--model", str(bf16_llama), "--decomposition", "plain", "--discard", "0,2,8", "--eval",
            "news", "--seq-len", "32", "--max-windows", "6", "--batch-size", "2", "--device", "cpu"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "in-place"), "--offload", "off"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in bf16_llama.iterdir()}
    assert main([*args, "--out", str(tmp_path / "offloaded"), "--offload"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in bf16_llama.iterdir()} == before  # the checkpoint untouched
    one = json.loads((tmp_path / "in-place" / "results.json").read_text())
    two = json.loads((tmp_path / "offloaded" / "results.json").read_text())
    ppl = [p["perplexity"] for p in one["points"]]
    assert len(set(ppl)) == 3  # every point changes the model
    for a, b in zip(one["points"], two["points"], strict=True):
        assert b["perplexity"] == pytest.approx(a["perplexity"], rel=1e-6), (a, b)


def test_bf16_checkpoint_build_bf16_training_merge_and_export(bf16_llama, text_file, tmp_path):
    """The GPU workflow's CPU-testable core: an offloaded build of a bf16 checkpoint (base written in
    bf16), `train --bf16` (autocast), then merge and export. The merged model and the exported LoRA
    on the original reproduce the trained run's logits to bf16 rounding of the base weights (the
    merge rounds W + ΔW to bf16 once: atol 2e-2 on logits of magnitude ~1)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    build = ["build", "--method", "corda-kpa", "--rank", "4", *common(bf16_llama, text_file, run), "--offload"]
    assert main(build) == 0
    assert main(["train", str(run), "--task", "sft", "--data", "polarity", "--train-samples", "16",
                 "--eval-samples", "4", "--max-length", "96", "--epochs", "1", "--batch-size", "8", "--bf16",
                 "--device", "cpu"]) == 0  # fmt: skip
    trained = Run.open(run)
    assert trained.meta["stage"] == "trained"
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    assert main(["export", str(run), "--against-original", str(bf16_llama), "--out", str(tmp_path / "lora")]) == 0
    ids = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trained.load_adapted().model(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
        original = AutoModelForCausalLM.from_pretrained(bf16_llama, dtype=torch.float32)
        exported = PeftModel.from_pretrained(original, tmp_path / "lora")
        for other in (merged(input_ids=ids).logits, exported(input_ids=ids).logits):
            torch.testing.assert_close(other, expected, atol=2e-2, rtol=0)


def test_hidden_state_folders_of_dead_processes_are_removed(tmp_path):
    """A run killed before it could clean up (SIGKILL) leaves its folder; the next one removes it."""
    import os
    import subprocess
    import sys

    from svdadapt.backend.hidden import PREFIX, remove_orphans

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan, mine = tmp_path / f"{PREFIX}{dead.stdout.strip()}-ab12", tmp_path / f"{PREFIX}{os.getpid()}-cd34"
    for folder in (orphan, mine):
        folder.mkdir()
        (folder / "batch-0.bin").write_bytes(b"0" * 16)
    states = HiddenStates(Placement(torch.device("cpu"), offloaded=True), count=1, directory=tmp_path)
    states.keep(0, torch.ones(2, 3))
    assert not orphan.exists() and mine.exists() and states.directory.name.startswith(f"{PREFIX}{os.getpid()}-")
    states.close()
    remove_orphans(tmp_path)  # a live process's folder stays
    assert mine.exists()


def test_scale_options_refuse_what_they_cannot_do_in_one_line(bf16_llama, text_file, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    assert main(["calibrate", *common(bf16_llama, text_file, tmp_path / "s"), "--hidden-states-dir", str(a_file)]) == 2
    assert "--hidden-states-dir" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert main(["calibrate", *common(bf16_llama, text_file, tmp_path / "store")]) == 0
    capsys.readouterr()
    sweep = ["compress", "--model", str(bf16_llama), "--covariances", str(tmp_path / "store"), "--decomposition",
             "plain", "--device", "cpu", "--seq-len", "32", "--max-windows", "1"]  # fmt: skip
    assert main([*sweep, "--offload", "on", "--targets", "lm_head", "--out", str(tmp_path / "c")]) == 2
    assert "swept block by block" in capsys.readouterr().err
    spectra = ["spectra", "--model", str(bf16_llama), "--covariances", str(tmp_path / "store"), "--device", "cpu"]
    assert main([*spectra, "--out", str(tmp_path / "sp.txt")]) == 2
    assert "--out must name a .png file" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun
    assert main([*sweep, "--out", str(tmp_path / "c2")]) == 2
    assert "compress runs in one process" in capsys.readouterr().err
    assert main(["eval", str(bf16_llama), "--perplexity", "news", "--device", "cpu"]) == 2
    assert "eval runs in one process" in capsys.readouterr().err
