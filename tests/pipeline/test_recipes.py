"""`svdadapt run recipe.yaml`: every shipped recipe plans, a tiny pipeline runs (`--config` is in cli/)."""

import glob
import json
from pathlib import Path

import pytest
import yaml

from svdadapt import SvdadaptError
from svdadapt.cli import main
from svdadapt.pipeline import load_yaml_mapping, merge_mappings, parse_overrides, plan

from ..helpers import REPO

ROOT = REPO
RECIPES = sorted(glob.glob(str(ROOT / "examples" / "*.yaml")) + glob.glob(str(ROOT / "examples/offline/*.yaml")))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: Path(p).stem)
def test_every_shipped_recipe_plans_into_valid_options(recipe):
    stages = plan(load_yaml_mapping(recipe), recipe)
    assert stages and all(stage.options is not None for stage in stages)


def test_offline_twins_exist_for_every_seed_recipe():
    seeds = {Path(p).stem for p in glob.glob(str(ROOT / "examples" / "*.yaml"))}
    twins = " ".join(Path(p).read_text() for p in glob.glob(str(ROOT / "examples" / "offline" / "*.yaml")))
    kinds = {"corda-kpa-nqopen", "corda-ipa-metamath", "lora-metamath", "full-decompose", "kasa-glue"}
    assert all(any(k in s for s in seeds) for k in kinds)
    for name in ("corda-kpa-nqopen", "corda-ipa-metamath", "lora-metamath"):
        assert f"Offline twin of {name}" in twins
    assert "full-decompose-wikitext2" in twins and "kasa-glue" in twins


def test_overrides_are_dotted_and_typed():
    over = parse_overrides(["train.epochs=2", "model=default", "train.bf16=true", "out=runs/x"])
    assert over == {"train": {"epochs": 2, "bf16": True}, "model": "default", "out": "runs/x"}
    merged = merge_mappings({"train": {"epochs": 1, "rank": 8}}, over)
    assert merged["train"] == {"epochs": 2, "rank": 8, "bf16": True}
    with pytest.raises(SvdadaptError, match="not KEY=VALUE"):
        parse_overrides(["epochs"])


def test_unknown_keys_are_one_line_errors(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"out": str(tmp_path / "o"), "model": "default", "trian": {}}))
    assert main(["run", str(recipe)]) == 2
    assert "unknown recipe key 'trian'" in capsys.readouterr().err
    recipe.write_text(yaml.safe_dump({"out": str(tmp_path / "o"), "model": "default", "train": {"epoch": 1}}))
    assert main(["run", str(recipe)]) == 2
    assert "unknown key 'epoch'" in capsys.readouterr().err
    recipe.write_text("train: [1, 2")
    assert main(["run", str(recipe)]) == 2
    assert "is not valid YAML" in capsys.readouterr().err


def test_a_whole_pipeline_runs_on_a_tiny_model(capsys, tiny_dirs, tmp_path):
    recipe = tmp_path / "pipeline.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": str(tiny_dirs["llama"]), "out": str(tmp_path / "out"), "device": "cpu",
        "calibrate": {"data": "news", "samples": 4, "seq_len": 32},
        "build": {"method": "corda-kpa", "rank": 4},
        "train": {"task": "sft", "data": "polarity", "train_samples": 16, "eval_samples": 4, "max_length": 160},
        "merge": {}, "export": {"against_original": str(tiny_dirs["llama"])},
        "eval": {"perplexity": "news", "seq_len": 64, "max_windows": 4},
    }))  # fmt: skip
    assert main(["run", str(recipe), "train.epochs=1"]) == 0, capsys.readouterr().err
    out = tmp_path / "out"
    assert (out / "covariances" / "store.json").is_file()
    run = json.loads((out / "run" / "run.json").read_text())
    assert run["stage"] == "trained" and run["calibration"]["covariances"] == "covariances"  # by name only
    assert (out / "merged" / "config.json").is_file() and (out / "exported" / "adapter_config.json").is_file()
    results = json.loads((out / "eval.json").read_text())
    assert "news" in json.dumps(results)


@pytest.mark.parametrize("override, said", [
    ("eval.tasks=polarity-instruc", "eval: unknown task 'polarity-instruc'"),
    ("eval.perplexity=wiki-heldot", "eval: unknown data source 'wiki-heldot'"),
    ("train.data=polarty", "train: unknown data source 'polarty'"),
    ("calibrate.data=missing.jsonl", "calibrate: data file missing.jsonl does not exist"),
])  # fmt: skip
def test_a_recipe_with_a_misnamed_source_or_task_fails_before_its_first_stage(capsys, tmp_path, override, said):
    recipe = REPO / "examples" / "offline" / "corda-kpa-wiki.yaml"
    assert main(["run", str(recipe), f"out={tmp_path / 'out'}", override]) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran


def test_a_number_where_text_is_read_is_taken_as_its_flag_would_take_it(tmp_path):
    recipe = {"out": str(tmp_path / "o"), "model": "default", "compress": {"discard": 16, "covariances": "covs"}}
    (stage,) = plan(recipe, "r.yaml")
    assert stage.options.discard == "16"  # `discard: 16` in YAML, as `--discard 16`
