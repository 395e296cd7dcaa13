"""`svdadapt train`: GLUE-style classification and instruction SFT on tiny models, end to end."""

import json

import pytest
import torch

from svdadapt.assets import polarity_examples
from svdadapt.cli import main
from svdadapt.data.tasks import dump_rows
from svdadapt.runs import Run

REVIEWS = polarity_examples()


@pytest.fixture(scope="module")
def cola_dir(tmp_path_factory):
    """GLUE CoLA-format files (sentence, label) made of real review sentences."""
    directory = tmp_path_factory.mktemp("cola")
    rows = [{"sentence": s, "label": int(y == "positive"), "idx": i} for i, (s, y) in enumerate(REVIEWS)]
    dump_rows(rows[:60] + rows[100:160], directory / "train.jsonl")
    dump_rows(rows[60:100] + rows[160:], directory / "validation.jsonl")
    return directory


@pytest.fixture(scope="module")
def stsb_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("stsb")
    lines = ["sentence1\tsentence2\tlabel"]
    for i in range(0, 80, 2):
        lines.append(f"{REVIEWS[i][0]}\t{REVIEWS[i + 1][0]}\t{(i % 10) / 2:.1f}")
    (directory / "train.tsv").write_text("\n".join(lines[:31]) + "\n")
    (directory / "dev.tsv").write_text("\n".join(lines[:1] + lines[31:]) + "\n")
    return directory


def train_args(tiny_dirs, out, kind="bert", method="kasa", task="glue:cola", **extra):
    args = ["train", "--model", str(tiny_dirs[kind]), "--method", method, "--rank", "4", "--alpha", "8",
            "--task", task, "--out", str(out), "--epochs", "2", "--batch-size", "8", "--max-length", "48",
            "--device", "cpu", "--logging-steps", "2"]  # fmt: skip
    for key, value in extra.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


def test_kasa_classification_logs_seed_lines_and_loss_terms(capsys, tiny_dirs, cola_dir, tmp_path):
    code = main(train_args(tiny_dirs, tmp_path / "run", data_dir=cola_dir, beta=0.1, gamma=1e-3))
    out = capsys.readouterr().out
    assert code == 0
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and "current_best_matthews_correlation" in epoch_lines[1]
    assert "train_loss" in epoch_lines[0]
    run = Run.open(tmp_path / "run")
    assert run.meta["stage"] == "trained" and run.meta["head"] == "seq-cls"
    results = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert results["best"]["epoch"] in (0, 1) and results["main_metric"] == "matthews_correlation"
    logged = [entry for entry in results["log"] if "kasa_singular" in entry]
    assert logged and all(e["kasa_orthogonal"] > 0 and "task_loss" in e for e in logged)
    assert (tmp_path / "run" / "loss_curve.png").is_file()
    trained, initial = run.adapters(), run.adapters(initial=True)
    name = next(iter(trained.layers))
    assert not torch.equal(trained.layers[name].B, initial.layers[name].B)  # B left zero: it trained
    assert not torch.equal(trained.layers[name].diag, initial.layers[name].diag)
    assert "classifier" in run.head_state()


def test_regression_task_reports_correlations(capsys, tiny_dirs, stsb_dir, tmp_path):
    code = main(train_args(tiny_dirs, tmp_path / "run", method="lora", task="glue:stsb", data_dir=stsb_dir, epochs=1))
    assert code == 0, capsys.readouterr().err
    best = json.loads((tmp_path / "run" / "train_results.json").read_text())["best"]
    assert set(best["metrics"]) >= {"pearson", "spearmanr"}
    assert Run.open(tmp_path / "run").meta["num_labels"] == 1


def test_same_seed_same_result(capsys, tiny_dirs, cola_dir, tmp_path):
    for out in ("a", "b"):
        assert main(train_args(tiny_dirs, tmp_path / out, data_dir=cola_dir, epochs=1)) == 0
    a, b = Run.open(tmp_path / "a").adapters(), Run.open(tmp_path / "b").adapters()
    for name, layer in a.layers.items():
        assert torch.equal(layer.B, b.layers[name].B) and torch.equal(layer.diag, b.layers[name].diag), name


@pytest.mark.parametrize("method", ["lora", "pissa", "milora", "corda-kpa"])
def test_every_method_trains_with_one_flag(method, capsys, tiny_dirs, tmp_path):
    extra = {"calib_data": "news", "calib_samples": 4, "calib_seq_len": 32} if method.startswith("corda") else {}
    code = main(train_args(tiny_dirs, tmp_path / "run", method=method, task="polarity", epochs=1, **extra))
    assert code == 0, capsys.readouterr().err
    run = Run.open(tmp_path / "run")
    name = next(iter(run.meta["layers"]))
    assert not torch.equal(run.adapters().layers[name].B, run.adapters(initial=True).layers[name].B)


def test_trained_kasa_classifier_exports_losslessly_to_peft(capsys, tiny_dirs, cola_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from svdadapt.adapters.inject import inject

    assert main(train_args(tiny_dirs, tmp_path / "run", data_dir=cola_dir, epochs=1)) == 0
    assert main(["export", str(tmp_path / "run"), "--against-original", str(tiny_dirs["bert"]),
                 "--out", str(tmp_path / "exported")]) == 0  # fmt: skip
    run = Run.open(tmp_path / "run")
    model = run.load_base().model
    inject(model, run.adapters())
    for name, state in run.head_state().items():
        getattr(model, name).load_state_dict(state)
    ids = torch.randint(3, 512, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        original = AutoModelForSequenceClassification.from_pretrained(tiny_dirs["bert"], num_labels=2)
        got = PeftModel.from_pretrained(original, tmp_path / "exported")(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_sft_on_polarity_and_resume(capsys, tiny_dirs, tmp_path):
    args = train_args(tiny_dirs, tmp_path / "run", kind="llama", method="pissa", task="sft", data="polarity",
                      epochs=1, train_samples=32, eval_samples=8, save_checkpoints=True, max_length=160,
                      order="length")  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    first = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert first["steps"] == 4 and first["main_metric"] == "loss"
    args[len(args) - 1 - args[::-1].index("--epochs") + 1] = "2"  # the last --epochs wins
    assert main([*args, "--resume"]) == 0, capsys.readouterr().err
    second = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert second["steps"] == 8  # continued from the epoch-1 checkpoint, not from scratch


def test_resume_of_a_finished_run_changes_nothing_and_a_mid_training_run_is_refused(capsys, tiny_dirs, tmp_path):
    """--resume of a run trained to the end (no checkpoints; or the last at --max-steps) is "nothing to
    resume", adapter unchanged; a run left at stage "training" (interrupted, killed) is refused by
    merge, export and eval, which would otherwise use its unfinished adapter."""
    for extra in ([], ["--save-checkpoints"]):
        out = tmp_path / f"run{len(extra)}"
        args = [*train_args(tiny_dirs, out, kind="llama", method="lora", task="sft", data="polarity", train_samples=16,
                            eval_samples=4, max_length=160, max_steps=2), *extra]  # fmt: skip
        assert main(args) == 0, capsys.readouterr().err
        assert (out / "checkpoints").is_dir() == bool(extra)  # no empty folder when none is kept
        adapter = (out / "adapter_state.safetensors").read_bytes()
        results = (out / "train_results.json").read_text()
        assert main([*args, "--resume"]) == 0
        assert "nothing to resume" in capsys.readouterr().out, extra
        assert (out / "adapter_state.safetensors").read_bytes() == adapter
        assert (out / "train_results.json").read_text() == results
    meta = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**meta, "stage": "training"}))  # as a killed training leaves it
    evaluate = ["eval", out, "--perplexity", "wiki-heldout", "--max-windows", "1", "--seq-len", "32"]
    for command in (["merge", out, "--out", tmp_path / "m"], ["export", out, "--out", tmp_path / "e"], evaluate):
        assert "is mid-training" in _bad(capsys, *command), command
    assert not (tmp_path / "m").exists() and not (tmp_path / "e").exists()


def test_examples_cut_to_their_prompt_are_said(capsys, tiny_dirs, tmp_path):
    args = train_args(tiny_dirs, tmp_path / "r", kind="llama", method="lora", task="sft", data="polarity",
                      train_samples=16, eval_samples=4, max_length=112, max_steps=1)  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert "have no response token within --max-length 112 and are left out" in capsys.readouterr().out


def _bad(capsys, *args):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [line.split("\r")[-1] for line in err.strip().splitlines() if line.split("\r")[-1].strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("svdadapt: error:") and "Traceback" not in err, err
    return lines[0]


def test_bad_inputs(capsys, tiny_dirs, cola_dir, stsb_dir, tmp_path):
    assert "--beta must be non-negative" in _bad(capsys, *train_args(tiny_dirs, tmp_path / "o", beta=-1))
    assert "--gamma must be non-negative" in _bad(capsys, *train_args(tiny_dirs, tmp_path / "o", gamma=-1))
    assert "needs --data" in _bad(capsys, *train_args(tiny_dirs, tmp_path / "o", kind="llama", task="sft"))
    missing = tmp_path / "nolabel"
    missing.mkdir()
    dump_rows([{"sentence": "a"}], missing / "train.jsonl")
    dump_rows([{"sentence": "b"}], missing / "dev.jsonl")
    assert "no 'label' column" in _bad(capsys, *train_args(tiny_dirs, tmp_path / "o", data_dir=missing))
    wrong = tmp_path / "wrongtype"
    wrong.mkdir()
    dump_rows([{"sentence": "a", "label": "good"}], wrong / "train.jsonl")
    dump_rows([{"sentence": "b", "label": 1}], wrong / "dev.jsonl")
    assert "is not an integer class" in _bad(capsys, *train_args(tiny_dirs, tmp_path / "o", data_dir=wrong))
    assert main(["build", "--model", str(tiny_dirs["bert"]), "--method", "lora", "--rank", "4", "--head", "seq-cls",
                 "--num-labels", "2", "--out", str(tmp_path / "cls"), "--device", "cpu"]) == 0  # fmt: skip
    capsys.readouterr()
    msg = _bad(capsys, "train", tmp_path / "cls", "--task", "glue:stsb", "--data-dir", stsb_dir,
               "--out", tmp_path / "cls")  # fmt: skip
    assert "regression task" in msg
    given = ((["--freeze-a"], "--freeze-a: this is"), (["--rank", "2", "--method", "eva"], "--method, --rank"),
             (["--calib-data", "wiki"], "--calib-data"), (["--rank", "8"], "--rank: this is"),
             (["--dropout", "0.0"], "--dropout"))  # fmt: skip
    for flags, named in given:
        msg = _bad(capsys, "train", tmp_path / "cls", "--task", "glue:cola", "--data-dir", cola_dir, *flags)
        assert named in msg and "is built already" in msg, msg  # build options are not silently dropped
    with pytest.raises(SystemExit):
        main(train_args(tiny_dirs, tmp_path / "o", task="glue:mnli"))
    assert "invalid choice: 'glue:mnli'" in capsys.readouterr().err
