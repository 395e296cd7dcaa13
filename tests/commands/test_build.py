"""`svdadapt build / merge / export` as a user runs them, and every bad input of the CorDA issue."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from svdadapt.cli import main

from ..helpers import bad, run


@pytest.fixture(scope="module")
def covs(tmp_path_factory, tiny_dirs, short_text_file):
    out = tmp_path_factory.mktemp("covs") / "store"
    args = ["calibrate", "--model", str(tiny_dirs["llama"]), "--data", str(short_text_file), "--samples", "4",
            "--seq-len", "32", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    return out


def base(tiny_dirs, out, method="corda-kpa", **extra):
    args = ["build", "--model", tiny_dirs["llama"], "--method", method, "--rank", "4", "--out", out, "--device", "cpu"]
    for key, value in extra.items():
        args += ["--" + key.replace("_", "-"), value]
    return args


def test_build_merge_export_from_the_command_line(capsys, tiny_dirs, covs, tmp_path):
    code, out, err = run(capsys, *base(tiny_dirs, tmp_path / "run", covariances=covs))
    assert code == 0, err
    assert "corda-kpa" in out and "stock PEFT LoRA" in out and "λ = 0.01" in out
    code, out, err = run(capsys, "merge", tmp_path / "run", "--out", tmp_path / "merged")
    assert code == 0 and (tmp_path / "merged" / "model.safetensors").is_file(), err
    code, out, err = run(capsys, "export", tmp_path / "run", "--against-original", tiny_dirs["llama"],
                         "--out", tmp_path / "exported")  # fmt: skip
    assert code == 0 and (tmp_path / "exported" / "adapter_config.json").is_file(), err
    # a second build into the same run directory replaces it
    assert run(capsys, *base(tiny_dirs, tmp_path / "run", method="pissa"))[0] == 0


def test_rank_not_below_min_in_out(capsys, tiny_dirs, tmp_path):
    msg = bad(capsys, *base(tiny_dirs, tmp_path / "o", method="pissa")[:-4], "--rank", "64", "--out", tmp_path / "o")
    assert "rank 64 is not below min(in, out) = 64" in msg


def test_non_positive_alpha(capsys, tiny_dirs, tmp_path):
    assert "--alpha must be positive" in bad(capsys, *base(tiny_dirs, tmp_path / "o", method="pissa", alpha=0))
    assert "alpha must be positive" in bad(
        capsys, *base(tiny_dirs, tmp_path / "o", method="pissa", alpha_pattern="q_proj=-1")
    )


def test_method_needing_covariances_without_them(capsys, tiny_dirs, tmp_path):
    msg = bad(capsys, *base(tiny_dirs, tmp_path / "o", method="corda-ipa"))
    assert "needs calibration covariances" in msg and "--covariances" in msg


def test_covariances_from_another_model(capsys, tiny_dirs, covs, tmp_path):
    from svdadapt.assets import save_tiny_model

    other = save_tiny_model("llama", tmp_path / "other", seed=1)
    args = base(tiny_dirs, tmp_path / "o", covariances=covs)
    args[args.index("--model") + 1] = other
    assert "recalibrate on this model" in bad(capsys, *args)


def test_covariances_missing_a_target(capsys, tiny_dirs, tmp_path, short_text_file):
    partial = tmp_path / "partial"
    assert main(["calibrate", "--model", str(tiny_dirs["llama"]), "--data", str(short_text_file), "--samples", "2",
                 "--seq-len", "16", "--targets", "q_proj", "--out", str(partial), "--device", "cpu"]) == 0  # fmt: skip
    capsys.readouterr()
    msg = bad(capsys, *base(tiny_dirs, tmp_path / "o", covariances=partial))
    assert "lacks 12 target layers" in msg


def test_not_a_store(capsys, tiny_dirs, tmp_path):
    assert "not a covariance store" in bad(capsys, *base(tiny_dirs, tmp_path / "o", covariances=tmp_path))


def test_non_finite_weights(capsys, tiny_dirs, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dirs["llama"], broken)
    weights = load_file(str(broken / "model.safetensors"))
    weights["model.layers.1.mlp.up_proj.weight"][3, 3] = float("nan")
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    args = base(tiny_dirs, tmp_path / "o", method="pissa")
    args[args.index("--model") + 1] = broken
    assert "weight of model.layers.1.mlp.up_proj has non-finite values" in bad(capsys, *args)
    assert not (tmp_path / "o").exists()


def test_out_that_is_not_a_run(capsys, tiny_dirs, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert "is not an svdadapt run" in bad(capsys, *base(tiny_dirs, foreign, method="lora"))
    assert (foreign / "keep.txt").read_text() == "mine"


def test_singular_covariance_is_damped_and_reported(capsys, tiny_dirs, tmp_path, short_text_file):
    """2 samples of 8 tokens: 16 tokens for 64- and 96-dim inputs, so every covariance is singular."""
    out = tmp_path / "run"
    code, stdout, err = run(capsys, *base(tiny_dirs, out, data=short_text_file, samples=2, seq_len=8))
    assert code == 0, err
    assert "λ = 0.01" in stdout
    from svdadapt.runs import Run

    state = Run.open(out).adapters()
    assert all(bool(torch.isfinite(a.A).all() and torch.isfinite(a.B).all()) for a in state.layers.values())


def test_merge_and_export_refuse_bad_input(capsys, tiny_dirs, covs, tmp_path):
    assert "not an svdadapt run" in bad(capsys, "merge", tmp_path, "--out", tmp_path / "m")
    assert run(capsys, *base(tiny_dirs, tmp_path / "run", method="pissa"))[0] == 0
    from svdadapt.assets import save_tiny_model

    other = save_tiny_model("llama", tmp_path / "other", seed=1)
    msg = bad(capsys, "export", tmp_path / "run", "--against-original", other, "--out", tmp_path / "e")
    assert "is not the model" in msg
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    assert "already exists" in bad(capsys, "merge", tmp_path / "run", "--out", tmp_path / "taken")


def test_the_summary_names_the_kind_of_base(capsys, tiny_dirs, tmp_path):
    for method, said in (("kasa", "base        truncated weights in"), ("pissa", "base        residual weights in"),
                         ("lora", "base        the original model (linked) in")):  # fmt: skip
        code, out, err = run(capsys, "build", "--model", tiny_dirs["llama"], "--method", method, "--rank", "2",
                             "--device", "cpu", "--out", tmp_path / method)  # fmt: skip
        assert code == 0 and said in out, (method, out, err)
