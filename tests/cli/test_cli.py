"""The console face (svdadapt.cli, `python -m svdadapt`): argparse's usage errors in one line, --config
files read as flags, Ctrl-C while the libraries load. (Each command's own refusals are in commands/;
that the console starts without the training stack, in test_architecture.py.)"""

import json

import pytest
import yaml

from svdadapt.cli import main


def test_unknown_method_is_rejected_by_the_parser(capsys, tiny_dirs, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["build", "--model", str(tiny_dirs["llama"]), "--method", "dora", "--rank", "4", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "invalid choice: 'dora'" in capsys.readouterr().err


def test_usage_errors_are_one_line_too(capsys):
    """argparse's errors (an unknown choice, a missing command) are one line that says where the usage is."""
    for argv, said in ((["build", "--method", "corda_kpa"], "invalid choice: 'corda_kpa'"), ([], "required: COMMAND")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and said in err and "--help)" in err, err


def test_python_dash_m_works(tiny_dirs):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "svdadapt", "calibrate", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--accumulate-dtype" in done.stdout


def test_config_file_supplies_flags(capsys, tiny_dirs, tmp_path):
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_dirs["gpt2"]), "method": "pissa", "rank": 4, "device": "cpu"}))
    assert main(["build", "--config", str(config), "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text())["method"] == "pissa"
    config.write_text(yaml.safe_dump({"methd": "pissa"}))
    assert main(["build", "--config", str(config), "--out", str(tmp_path / "run2")]) == 2
    assert "unknown key 'methd'" in capsys.readouterr().err


def test_config_file_reads_yaml_1_1_switches_as_their_flags(capsys, tiny_dirs, text_file, tmp_path):
    """`offload: off` (YAML 1.1's false) in a --config file is `--offload off`, as in a recipe."""
    config = tmp_path / "calibrate.yaml"
    config.write_text(f"model: {tiny_dirs['llama']}\ndata: {text_file}\nsamples: 4\nseq_len: 32\ndevice: cpu\n"
                      "offload: on\n")  # fmt: skip
    assert main(["calibrate", "--config", str(config), "--out", str(tmp_path / "on")]) == 0, capsys.readouterr().err
    config.write_text(config.read_text().replace("offload: on", "offload: off"))
    assert main(["calibrate", "--config", str(config), "--out", str(tmp_path / "off")]) == 0, capsys.readouterr().err
    config.write_text(config.read_text().replace("offload: off", "offload: maybe"))
    assert main(["calibrate", "--config", str(config), "--out", str(tmp_path / "bad")]) != 0
    assert "offload" in capsys.readouterr().err


def test_ctrl_c_while_the_libraries_load_is_one_line(capsys, monkeypatch):
    import svdadapt.cli as cli

    def loading():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "subcommands", loading)
    assert main(["run", "r.yaml"]) == 130
    assert capsys.readouterr().err.strip() == "svdadapt: interrupted"
