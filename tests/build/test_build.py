"""Building runs: the same run from a store or calibrated on the fly, seeded inits, rank and alpha
patterns in the run and its PEFT config, the metadata a run keeps. (What a built adapter does once
injected, merged or exported is in adapters/; every method row end to end in methods/test_table.py.)"""

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from svdadapt.runs import Run

from ..helpers import F32, IDS, logits, make_run, rel


def test_rank_and_alpha_patterns_reach_the_peft_config(tiny_dirs, text_file, tmp_path):
    import json

    run = make_run(
        tiny_dirs, text_file, tmp_path / "run", method="pissa", rank_pattern="re:.*mlp\\..*=8", alpha_pattern="q_proj=2"
    )
    layers = run.meta["layers"]
    assert layers["model.layers.0.mlp.up_proj"]["rank"] == 8 and layers["model.layers.0.self_attn.k_proj"]["rank"] == 4
    assert layers["model.layers.1.self_attn.q_proj"]["alpha"] == 2
    config = json.loads((run.path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["rank_pattern"]["model.layers.1.mlp.down_proj"] == 8
    assert config["alpha_pattern"]["model.layers.0.self_attn.q_proj"] == 2
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run.path / "base"), run.path / "adapter")
    original = logits(AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]), IDS)
    assert rel(logits(peft, IDS), original) < F32


def test_store_and_on_the_fly_calibration_build_the_same_run(tiny_dirs, text_file, tmp_path):
    from svdadapt.commands import CalibrateOptions, calibrate

    calibrate(
        CalibrateOptions.of(model=str(tiny_dirs["llama"]), data=str(text_file), samples=8, seq_len=32, batch_size=4,
                         out=str(tmp_path / "covs"), device="cpu"),
        progress=False,
    )  # fmt: skip
    a = make_run(tiny_dirs, text_file, tmp_path / "a")
    b = make_run(tiny_dirs, text_file, tmp_path / "b", data=None, covariances=str(tmp_path / "covs"))
    for name, la in a.adapters().layers.items():
        lb = b.adapters().layers[name]
        assert torch.equal(la.A, lb.A) and torch.equal(la.B, lb.B), name
    assert a.meta["base_fingerprint"] == b.meta["base_fingerprint"]


def test_build_is_deterministic_for_a_seed(tiny_dirs, text_file, tmp_path):
    a = make_run(tiny_dirs, text_file, tmp_path / "a", method="lora", seed=3).adapters()
    b = make_run(tiny_dirs, text_file, tmp_path / "b", method="lora", seed=3).adapters()
    c = make_run(tiny_dirs, text_file, tmp_path / "c", method="lora", seed=4).adapters()
    name = next(iter(a.layers))
    assert torch.equal(a.layers[name].A, b.layers[name].A)
    assert not torch.equal(a.layers[name].A, c.layers[name].A)


def test_run_round_trips_its_metadata(tiny_dirs, text_file, tmp_path):
    run = make_run(tiny_dirs, text_file, tmp_path / "run")
    again = Run.open(run.path)
    assert again.meta["method"] == "corda-kpa" and again.meta["stage"] == "built"
    assert again.meta["original"]["fingerprint"] != again.meta["base_fingerprint"]
    assert all(v["damping"] == 0.01 for v in again.meta["layers"].values())
