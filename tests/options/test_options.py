"""Options: groups composed into commands (prefixes, per-use defaults), every value checked on
construction with a one-line error naming the flag as the command spells it."""

import argparse
from dataclasses import dataclass

import pytest

from svdadapt import SvdadaptError
from svdadapt.commands import BuildOptions, TrainOptions
from svdadapt.options import POSITIVE, Options, add_options, flat_values, from_mapping, from_namespace, group, opt


@dataclass(kw_only=True)
class Inner(Options):
    name: str = opt(help="a required name")
    count: int = opt(3, "a count", check=POSITIVE)
    scale: float = opt(1.0, "a scale")


@dataclass(kw_only=True)
class Outer(Options):
    plain: Inner = group(Inner)
    tagged: Inner = group(Inner, prefix="extra_", defaults={"name": None, "count": 5})
    flag: bool = opt(False, "a switch")


def parse(argv):
    parser = argparse.ArgumentParser()
    add_options(parser, Outer)
    return from_namespace(Outer, parser.parse_args(argv))


def test_groups_become_flags_with_their_prefix_and_per_use_defaults():
    opts = parse(["--name", "a", "--extra-count", "7", "--flag"])
    assert opts.plain == Inner(name="a") and opts.tagged.count == 7 and opts.tagged.name is None and opts.flag
    assert flat_values(opts) == {
        "name": "a", "count": 3, "scale": 1.0, "extra_name": None, "extra_count": 7, "extra_scale": 1.0, "flag": True,
    }  # fmt: skip
    assert parse(["--name", "a"]).tagged.count == 5


def test_a_bad_value_names_the_flag_as_the_command_spells_it():
    with pytest.raises(SvdadaptError, match="^--extra-count must be positive, got 0$"):
        parse(["--name", "a", "--extra-count", "0"])
    with pytest.raises(SvdadaptError, match="^--count must be positive, got -1$"):
        parse(["--name", "a", "--count", "-1"])


def test_mappings_are_checked_like_flags():
    where = "recipe.yaml: stage"
    assert from_mapping(Outer, {"name": "a", "scale": "1e-05"}, where).plain.scale == 1e-5  # YAML 1.1 read text
    with pytest.raises(SvdadaptError, match="count must be an integer, got 'abc'"):
        from_mapping(Outer, {"name": "a", "count": "abc"}, where)
    with pytest.raises(SvdadaptError, match="--name must be a string, got \\[1\\]"):
        from_mapping(Outer, {"name": [1]}, where)
    with pytest.raises(SvdadaptError, match="unknown key 'nmae'"):
        from_mapping(Outer, {"nmae": "a"}, where)
    with pytest.raises(SvdadaptError, match="needs 'name'"):
        from_mapping(Outer, {}, where)
    with pytest.raises(SvdadaptError, match="--flag must be true or false"):
        from_mapping(Outer, {"name": "a", "flag": "maybe"}, where)


def test_train_builds_with_builds_own_option_groups():
    """train's adapter options are build's, its calibration source is calibrate's, prefixed calib_."""
    train = TrainOptions.of(out="o", model="m", method="corda-kpa", rank=4, calib_data="wiki", calib_samples=9,
                            accumulate_dtype="float32")  # fmt: skip
    build = BuildOptions(model="m", out="o", adapter=train.adapter, calibration=train.calibration)
    assert build.adapter.accumulate_dtype == "float32" and build.calibration.samples == 9
    assert TrainOptions.of(run="r").adapter.rank is None  # given or not (train RUN refuses it); build needs --rank
    with pytest.raises(SvdadaptError, match="needs 'rank'"):
        BuildOptions.of(model="m", out="o", method="lora")
    with pytest.raises(SvdadaptError, match="--calib-data SOURCE"):
        TrainOptions.of(out="o", model="m", method="corda-kpa")
    with pytest.raises(SvdadaptError, match="either --covariances or --data"):
        BuildOptions.of(model="m", out="o", method="corda-kpa", rank=4, covariances="c", data="wiki")


def test_an_on_off_choice_reads_yaml_booleans_and_a_bare_flag():
    """``offload: off`` in YAML 1.1 is the boolean false; a choice of on/off reads it as "off". A bare
    ``--offload`` is its nargs="?" constant, "on"."""
    import yaml

    from svdadapt.commands import CalibrateOptions

    base = {"model": "m", "data": "wiki", "out": "o"}
    for text, expected in (("off", "off"), ("on", "on"), ("auto", "auto"), ("false", "off"), ("true", "on")):
        values = {**base, **yaml.safe_load(f"offload: {text}")}
        opts = from_mapping(CalibrateOptions, values, "recipe.yaml: calibrate")
        assert opts.placement.offload == expected, text
    assert CalibrateOptions.of(**base).placement.offload_choice is None
    assert from_mapping(CalibrateOptions, {**base, "offload": False}, "r").placement.offload_choice is False
    with pytest.raises(SvdadaptError, match="--offload: unknown value 'yes please'; choose one of auto, on, off"):
        from_mapping(CalibrateOptions, {**base, "offload": "yes please"}, "r")
    parser = argparse.ArgumentParser()
    add_options(parser, CalibrateOptions)
    flags = ["--model", "m", "--data", "wiki", "--out", "o"]
    assert from_namespace(CalibrateOptions, parser.parse_args([*flags, "--offload"])).placement.offload == "on"
    assert from_namespace(CalibrateOptions, parser.parse_args(flags)).placement.offload == "auto"


def test_pattern_options_are_checked_with_the_options_before_any_model_loads(tmp_path):
    from svdadapt.commands import BuildOptions, CalibrateOptions, CompressOptions

    common = dict(model="no-such-model-is-loaded", method="lora", rank=4, out=str(tmp_path / "r"))
    with pytest.raises(SvdadaptError, match="--rank-pattern wants PATTERN=VALUE"):
        BuildOptions.of(rank_pattern="q_proj", **common)
    with pytest.raises(SvdadaptError, match="--rank-pattern pattern 're:\\(' is not a valid regex"):
        BuildOptions.of(rank_pattern="re:(=4", **common)
    with pytest.raises(SvdadaptError, match="--alpha-pattern: 'inf' is not a finite number"):
        BuildOptions.of(alpha_pattern="q_proj=inf", **common)
    for options, extra in ((BuildOptions, common), (CalibrateOptions, {"model": "m", "data": "news", "out": "o"}),
                           (CompressOptions, {"model": "m", "out": "o"})):  # fmt: skip
        with pytest.raises(SvdadaptError, match="--targets has a re: pattern that is no valid regex"):
            options.of(**{**extra, "targets": "q_proj,re:(["})


def test_a_recipe_with_a_bad_rank_pattern_fails_before_its_first_stage(capsys, tmp_path):
    import yaml

    from svdadapt.cli import main

    recipe = tmp_path / "r.yaml"
    build = {"method": "corda-kpa", "rank": 4, "rank_pattern": "q_proj:8"}
    calibrate = {"data": "news", "samples": 4}
    recipe.write_text(yaml.safe_dump({"model": "default", "out": str(tmp_path / "out"), "calibrate": calibrate,
                                      "build": build}))  # fmt: skip
    assert main(["run", str(recipe)]) == 2
    assert "--rank-pattern wants PATTERN=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_every_float_option_refuses_what_is_not_finite():
    from svdadapt.commands import TrainOptions

    for bad in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(SvdadaptError, match="--module-lr must be a finite number"):
            TrainOptions.of(run="r", task="sft", data="polarity", module_lr=bad)
