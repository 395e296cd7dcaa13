"""Training an existing run: in place, into a copy, and under `torchrun` with two CPU processes."""

import json
import os
import subprocess
import sys

import torch

from svdadapt.cli import main
from svdadapt.runs import BASE_NOTE, Run

SFT = ["--task", "sft", "--data", "polarity", "--train-samples", "32", "--eval-samples", "8", "--epochs", "1",
       "--batch-size", "8", "--max-length", "160", "--device", "cpu", "--logging-steps", "1"]  # fmt: skip


def build_run(tiny_dirs, out):
    args = ["build", "--model", str(tiny_dirs["llama"]), "--method", "pissa", "--rank", "4", "--out", str(out),
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0


def test_training_into_a_copy_leaves_the_built_run_as_it_was(capsys, tiny_dirs, tmp_path):
    build_run(tiny_dirs, tmp_path / "built")
    before = (tmp_path / "built" / "adapter_state.safetensors").read_bytes()
    assert main(["train", str(tmp_path / "built"), "--out", str(tmp_path / "trained"), *SFT]) == 0
    built, trained = Run.open(tmp_path / "built"), Run.open(tmp_path / "trained")
    assert built.meta["stage"] == "built" and trained.meta["stage"] == "trained"
    assert (tmp_path / "built" / "adapter_state.safetensors").read_bytes() == before
    name = next(iter(trained.meta["layers"]))
    assert not torch.equal(trained.adapters().layers[name].B, built.adapters().layers[name].B)
    # the copy stands alone: its base is its own, its PEFT adapter names no path of this machine
    config = json.loads((tmp_path / "trained" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE_NOTE and (tmp_path / "trained" / "base").is_dir()
    trained.load_base()  # fingerprint of the copied base checks out


def test_torchrun_two_processes_train_one_run(tiny_dirs, tmp_path):
    build_run(tiny_dirs, tmp_path / "run")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
              "-m", "svdadapt", "train"]  # fmt: skip
    proc = subprocess.run([*launch, str(tmp_path / "run"), *SFT], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert results["steps"] == 2  # 32 examples, 8 per process, 2 processes: 2 steps, not 4
    assert Run.open(tmp_path / "run").meta["stage"] == "trained"
    refused = subprocess.run(
        [*launch, "--model", str(tiny_dirs["llama"]), "--method", "lora", "--out", str(tmp_path / "new"), *SFT],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode != 0 and "train an existing run" in refused.stderr
    assert not (tmp_path / "new").exists()


def test_every_train_flag_passes_through_the_launchers():
    """torchrun's parser rejects a flag that abbreviates two of its own (as --run did --run-path)."""
    import argparse

    from torch.distributed.run import get_args_parser

    from svdadapt.commands import TrainOptions
    from svdadapt.options import add_options

    ours = argparse.ArgumentParser()
    add_options(ours, TrainOptions)
    flags = [s for action in ours._actions for s in action.option_strings if s.startswith("--")]
    assert "--out" in flags and "--module-lr" in flags
    parsers = [get_args_parser()]
    try:
        from accelerate.commands.launch import launch_command_parser

        parsers.append(launch_command_parser())
    except ImportError:  # accelerate is a dependency; its CLI module may move between versions
        pass
    for parser in parsers:
        for flag in [*flags, "--config"]:
            parsed = parser.parse_args(["-m", "svdadapt", "train", "RUN", flag])
            assert parsed.training_script_args[-1] == flag
