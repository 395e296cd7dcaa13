"""Step checkpoints and evaluation (`--save-steps`, `--eval-steps`, `--save-total-limit`): a training
stopped after a step checkpoint resumes, from the newest complete one, to the result of one never stopped."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from svdadapt.cli import main
from svdadapt.train.options import TrainingOptions


def sft_args(tiny_dirs, out):
    return ["train", "--model", str(tiny_dirs["llama"]), "--method", "pissa", "--rank", "4", "--task", "sft",
            "--data", "polarity", "--train-samples", "32", "--eval-samples", "4", "--max-length", "160",
            "--batch-size", "4", "--device", "cpu", "--logging-steps", "1", "--max-steps", "6",
            "--save-steps", "2", "--eval-steps", "2", "--out", str(out)]  # fmt: skip


def checkpoints(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_an_interrupted_training_resumes_from_its_step_checkpoint_to_the_same_result(
    capsys, tiny_dirs, tmp_path, monkeypatch
):
    import svdadapt.train.session as session

    straight = tmp_path / "straight"
    assert main(sft_args(tiny_dirs, straight)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    expected = json.loads((straight / "train_results.json").read_text())
    assert expected["steps"] == 6 and [h["step"] for h in expected["history"]] == [2, 4, 6]
    assert "step 4 (epoch 0):" in out  # the evaluation line names its step
    assert checkpoints(straight) == ["checkpoint-4", "checkpoint-6"]  # --save-total-limit 2 (the default)

    class StopAfterStep4(TrainerCallback):  # as a kill would, once checkpoint-4 is on disk
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise KeyboardInterrupt

    real = session.StepTimer
    monkeypatch.setattr(session, "StepTimer", lambda: type("T", (real, StopAfterStep4), {})())
    resumed = tmp_path / "resumed"
    assert main(sft_args(tiny_dirs, resumed)) == 130
    assert "--save-steps" in capsys.readouterr().err
    assert checkpoints(resumed) == ["checkpoint-2", "checkpoint-4"]
    assert json.loads((resumed / "run.json").read_text())["stage"] == "training"
    monkeypatch.undo()

    cut_short = tmp_path / "cut-short"
    shutil.copytree(resumed, cut_short)
    (cut_short / "checkpoints" / "checkpoint-4" / "trainer_state.json").write_text("{")  # as a kill mid-save leaves it

    a = load_file(str(straight / "adapter_state.safetensors"))
    initial = load_file(str(straight / "initial_state.safetensors"))
    assert any(not torch.equal(a[k], initial[k]) for k in a)  # it trained: the equality is not of untouched tensors
    for run, steps_now in ((resumed, 2), (cut_short, 4)):  # from checkpoint-4; from checkpoint-2, the newest complete
        assert main([*sft_args(tiny_dirs, run), "--resume"]) == 0, capsys.readouterr().err
        assert ("checkpoint-4 was cut short" in capsys.readouterr().out) == (run == cut_short)
        got = json.loads((run / "train_results.json").read_text())
        assert got["steps"] == 6 and got["steps_this_session"] == steps_now
        assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-6)
        assert [h["step"] for h in got["history"]] == [2, 4, 6]
        b = load_file(str(run / "adapter_state.safetensors"))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a), run.name
        assert json.loads((run / "run.json").read_text())["stage"] == "trained"


def test_save_options_choose_trainers_strategy():
    assert TrainingOptions().save_strategy == "no"
    assert TrainingOptions(save_checkpoints=True).save_strategy == "epoch"
    assert TrainingOptions(save_steps=500).save_strategy == "steps"
    assert TrainingOptions(save_checkpoints=True, save_steps=5).save_strategy == "steps"
