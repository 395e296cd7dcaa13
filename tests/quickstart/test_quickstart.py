"""The quickstart's whole flow, on a tiny model (the real one runs in `make quickstart`)."""

import json

from svdadapt.cli import main


def test_quickstart_flow_writes_a_report(capsys, tiny_dirs, tmp_path):
    args = ["quickstart", "--model", str(tiny_dirs["llama"]), "--out", str(tmp_path / "qs"), "--rank", "4",
            "--calib-samples", "4", "--calib-seq-len", "32", "--eval-windows", "2", "--eval-seq-len", "64",
            "--epochs", "0.25", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    report = tmp_path / "qs" / "report"
    rows = json.loads((report / "results.json").read_text())["rows"]
    names = ["original (no adapter)"] + [f"{m} {s}" for m in ("corda-kpa", "lora", "kasa", "kasa-context")
                                         for s in ("at init", "trained")]  # fmt: skip
    assert list(rows) == names
    original = rows["original (no adapter)"]
    for method in ("corda-kpa", "lora"):  # residual and plain LoRA are identities at init
        assert abs(rows[f"{method} at init"]["perplexity"] / original["perplexity"] - 1) < 1e-4
        assert rows[f"{method} at init"]["accuracy"] == original["accuracy"]
    assert rows["kasa at init"]["perplexity"] != original["perplexity"]  # KaSA's truncated base
    assert (report / "results.md").read_text().count("|") > 20
    assert (report / "loss_curves.png").is_file() and (report / "spectra.png").is_file()
    assert "| kasa-context trained |" in out and "| lora at init (= original) |" in out  # copied, not evaluated
    assert not (tmp_path / "qs" / "runs" / "lora" / "eval" / "initial.json").exists()
    # a rerun reuses the calibration, the trained runs and their evaluations: every stage is kept
    assert main(args) == 0
    again = capsys.readouterr().out
    for stage in ("calibrate", *(f"train {m}" for m in ("corda-kpa", "lora", "kasa", "kasa-context"))):
        assert f"{stage}: kept from the earlier run" in again
    assert again.count("kept from the earlier run") == again.count("== svdadapt quickstart: stage") == 18
    assert json.loads((report / "results.json").read_text())["rows"].keys() == rows.keys()
