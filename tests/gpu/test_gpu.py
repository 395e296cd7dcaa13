"""The GPU paths, run where a CUDA device is at hand (skipped elsewhere; their CPU-testable cores are
in tests/backend/test_offload.py): offloaded and in-place calibration and builds on the GPU against
the CPU's, and the bf16 workflow (build, `train --bf16`, merge, export) on the GPU.

Tolerances: the GPU sums float32 products in another order than the CPU (and cuBLAS may use other
kernels): covariances agree to float32 rounding of sums over a few hundred tokens (rtol 1e-4); the
adapters are decompositions of them, compared through their products s·B·A (atol 1e-3 of the
largest entry: the tiny model's context products are poorly conditioned at the bottom).
"""

from __future__ import annotations

import pytest
import torch

from svdadapt import CovarianceStore
from svdadapt.cli import main
from svdadapt.runs import Run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def common(model, text_file, out, device):
    return ["--model", str(model), "--data", str(text_file), "--samples", "8", "--seq-len", "32",
            "--batch-size", "2", "--device", device, "--out", str(out)]  # fmt: skip


@pytest.mark.parametrize("offload", [False, True])
def test_gpu_calibration_and_build_equal_the_cpus(tiny_dirs, text_file, tmp_path, offload):
    extra = ["--offload"] if offload else []
    model = tiny_dirs["llama"]
    assert main(["calibrate", *common(model, text_file, tmp_path / "cpu", "cpu")]) == 0
    assert main(["calibrate", *common(model, text_file, tmp_path / "gpu", "cuda"), *extra]) == 0
    cpu, gpu = CovarianceStore.load(tmp_path / "cpu"), CovarianceStore.load(tmp_path / "gpu")
    for name in cpu.modules:
        torch.testing.assert_close(gpu.covariance(name), cpu.covariance(name), rtol=1e-4, atol=1e-7)
    build = ["build", "--method", "corda-kpa", "--rank", "4"]
    assert main([*build, *common(model, text_file, tmp_path / "run-cpu", "cpu")]) == 0
    assert main([*build, *common(model, text_file, tmp_path / "run-gpu", "cuda"), *extra]) == 0
    a, b = Run.open(tmp_path / "run-cpu").adapters(), Run.open(tmp_path / "run-gpu").adapters()
    for name, layer in a.layers.items():
        expected, got = layer.delta(), b.layers[name].delta()
        torch.testing.assert_close(got, expected, atol=1e-3 * float(expected.abs().max()), rtol=0)


def test_bf16_build_train_merge_export_on_the_gpu(tiny_dirs, text_file, tmp_path):
    from svdadapt.models import load_model

    bf16 = tmp_path / "bf16"
    load_model(str(tiny_dirs["llama"])).model.to(torch.bfloat16).save_pretrained(bf16)
    load_model(str(tiny_dirs["llama"])).tokenizer.save_pretrained(bf16)
    run = tmp_path / "run"
    assert main(["build", "--method", "corda-kpa", "--rank", "4", *common(bf16, text_file, run, "cuda")]) == 0
    train = ["train", str(run), "--task", "sft", "--data", "polarity", "--train-samples", "16", "--eval-samples",
             "4", "--max-length", "96", "--epochs", "1", "--bf16", "--device", "cuda"]  # fmt: skip
    assert main(train) == 0
    assert main(["merge", str(run), "--out", str(tmp_path / "merged"), "--device", "cuda"]) == 0
    assert main(["export", str(run), "--against-original", str(bf16), "--out", str(tmp_path / "lora")]) == 0
    assert Run.open(run).meta["stage"] == "trained"
    assert (tmp_path / "merged" / "config.json").is_file() and (tmp_path / "lora" / "adapter_config.json").is_file()
