"""Recipes and --config files: every problem said at once (one line each, one error), "did you mean",
and the names PEFT, TRL, LLaMA-Factory and axolotl users type taken for svdadapt's own."""

import json

import pytest
import yaml

from svdadapt import SvdadaptError
from svdadapt.aliases import ALIASES
from svdadapt.cli import main
from svdadapt.commands import COMMANDS, TrainOptions
from svdadapt.errors import Problems
from svdadapt.options import flat_fields
from svdadapt.pipeline import plan


def error_lines(capsys, *args):
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("svdadapt: error: ")
    return err.strip().splitlines()


def test_every_problem_of_a_recipe_is_said_at_once(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": "default", "out": str(tmp_path / "o"), "devcie": "cpu",
        "build": {"method": "lora", "rnak": 4},
        "train": {"task": "sft", "data": "polarity", "epochs": 0, "warmpu_ratio": 0.1, "batch_size": -2},
        "eval": {"perplexity": "news", "max_windows": 0},
    }))  # fmt: skip
    lines = error_lines(capsys, "run", recipe)
    assert lines[0] == "svdadapt: error: 6 problems:"
    said = "\n".join(lines[1:])
    for part in ("unknown recipe key 'devcie' in", "did you mean 'device'?", "unknown key 'rnak' in", "'rank'?",
                 "did you mean 'warmup_ratio'?", "train: --epochs must be positive, got 0",
                 "train: --batch-size must be positive, got -2",
                 "eval: --max-windows must be positive, got 0"):  # fmt: skip
        assert part in said, part
    assert "choose one of" not in said  # each guess stands alone; one problem alone keeps the list (below)
    assert not (tmp_path / "o").exists()
    recipe.write_text(yaml.safe_dump({"model": "default", "out": str(tmp_path / "o"), "train": {"epoch": 1}}))
    (line,) = error_lines(capsys, "run", recipe)
    assert "unknown key 'epoch'" in line and "did you mean 'epochs'? choose one of" in line


def test_a_stage_with_problems_still_hands_over_its_output(tmp_path):
    recipe = {"model": "default", "out": str(tmp_path / "o"), "build": {"method": "lora", "rank": 0},
              "merge": {}, "eval": {"max_windows": 2}}  # fmt: skip
    with pytest.raises(Problems) as caught:
        plan(recipe, "r.yaml")
    assert caught.value.problems == ["r.yaml: build: --rank must be positive, got 0"]  # merge and eval get the run


def test_aliases_in_a_recipe_mean_the_options(tmp_path):
    recipe = {
        "model": "default", "out": str(tmp_path / "o"),
        "build": {"method": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1,
                  "target_modules": ["q_proj", "v_proj"]},
        "train": {"task": "sft", "data": "polarity", "learning_rate": 1e-3, "num_train_epochs": 2,
                  "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4, "cutoff_len": 128},
    }  # fmt: skip
    build, train = plan(recipe, "r.yaml")
    adapter = build.options.adapter
    assert (adapter.rank, adapter.alpha, adapter.dropout, adapter.targets) == (4, 8, 0.1, "q_proj,v_proj")
    t = train.options.training
    assert (t.module_lr, t.epochs, t.batch_size, t.grad_accum) == (1e-3, 2, 2, 4)
    assert train.options.task.max_length == 128
    recipe["train"]["max_seq_length"] = 256  # the same option twice
    with pytest.raises(SvdadaptError, match="'cutoff_len' and 'max_seq_length' both set 'max_length'"):
        plan(recipe, "r.yaml")


def test_aliases_only_where_their_option_exists():
    assert TrainOptions.of(out="o", model="default", method="lora", r=4).adapter.rank == 4
    with pytest.raises(SvdadaptError, match="unknown key 'max_seq_length'"):  # calibrate has --seq-len, no --max-length
        COMMANDS["calibrate"].options.of(model="default", data="wiki", out="c", max_seq_length=64)
    every = {flat.dest for command in COMMANDS.values() for flat in flat_fields(command.options)}
    assert set(ALIASES.values()) <= every and not set(ALIASES) & every  # each means an option, none is one


def test_aliases_in_config_files_and_as_hidden_flags(capsys, tiny_dirs, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"learning_rate": 1e-2, "lora_rank": 4, "num_train_epochs": 1, "epoch": 3}))
    lines = error_lines(capsys, "train", "--config", config, "--model", tiny_dirs["llama"], "--out", tmp_path / "x")
    assert len(lines) == 1 and "unknown key 'epoch'" in lines[0] and "did you mean 'epochs'" in lines[0]
    config.write_text(yaml.safe_dump({"learning_rate": 1e-2, "lora_rank": 4, "max_steps": 2, "batch_size": 0}))
    assert "--batch-size must be positive" in error_lines(capsys, "train", "--config", config)[0]
    config.write_text(yaml.safe_dump({"learning_rate": 1e-2, "lora_rank": 4, "max_steps": 2}))
    args = ["train", "--config", config, "--model", tiny_dirs["llama"], "--method", "lora", "--task", "sft",
            "--data", "polarity", "--train-samples", "8", "--eval-samples", "2", "--max-length", "160",
            "--device", "cpu", "--out", tmp_path / "run", "--lora-alpha", "2"]  # fmt: skip
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert {v["rank"] for v in meta["layers"].values()} == {4} and meta["alpha"] == 2
    assert meta["training"]["steps"] == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = capsys.readouterr().out
    assert "--module-lr" in shown and "--lora-r" not in shown and "--learning-rate" not in shown  # hidden
