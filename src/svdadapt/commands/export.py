"""``svdadapt export``: a run's adapter as a stock PEFT LoRA, for its own base or for the untouched
original model (rank 2r for residual and KaSA runs; see adapters.peft_format.lora_on_original)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import backend
from ..adapters.peft_format import LoraFactors, lora_on_base, lora_on_original, nearest_lora, write_peft_lora
from ..adapters.state import AdapterSet
from ..atomic import atomic_directory, exclusive, write_json
from ..errors import SvdadaptError
from ..fingerprint import body_fingerprint
from ..models import load_model, origin
from ..options import Options, opt
from ..peft_handle import adapter_option, chosen_adapter
from ..runs import PEFT_WEIGHTS, Run, adapter_base_name, check_new_out, task_type_of, tokenizer_files
from ..targets import weight_matrix

ORIGINAL_NOTE = (
    "the original model this adapter was exported against (svdadapt export --against-original): load it with "
    "from_pretrained and pass the model and this folder to peft.PeftModel.from_pretrained"
)  # where no hub id names it: never a path of the machine that wrote it


@dataclass(kw_only=True)
class ExportOptions(Options):
    """Write a run's adapter as a stock PEFT LoRA that applies to the untouched original model (rank
    2r for residual and KaSA runs), so the run's outputs are reproduced without its residual base. On
    a quantized run W_q + s·B·A − W is no longer of rank 2r: the best rank-2r approximation is
    written and its measured relative error said."""

    run: str = opt(help="run directory (from svdadapt build or train)", positional=True)
    out: str = opt(help="directory for the PEFT adapter")
    against_original: str | None = opt(
        None, "the original model the run was built from (checked by fingerprint): write a LoRA for it; "
        "without it, the adapter for the run's own base (residual or truncated) is written",
    )  # fmt: skip
    adapter: str | None = adapter_option()


@dataclass
class ExportResult:
    out: Path
    against_original: str | None
    approximation: dict | None = None  # a quantized run's: what the rank-2r LoRA leaves, by layer

    def summary(self) -> str:
        target = "the original model" if self.against_original else "the run's base"
        lines = [f"PEFT LoRA for {target}: {self.out}"]
        if self.approximation:
            weight = [e["of_weight"] for e in self.approximation.values()]
            difference = [e["of_difference"] for e in self.approximation.values()]
            lines.append(
                "  approximate: the quantized base makes D = W_q + s·B·A − W full rank; the best rank-2r LoRA "
                f"leaves {sum(difference) / len(difference):.3f} of D (mean ‖D − D_2r‖/‖D‖), the exported weights "
                f"differ from the run's by {sum(weight) / len(weight):.4f} (mean, max {max(weight):.4f}, relative)"
            )
        lines.append(f"  load it with PeftModel.from_pretrained(<{target}>, {str(self.out)!r})")
        return "\n".join(lines)


def export(opts: ExportOptions, progress: bool = True) -> ExportResult:
    """Write the PEFT adapter to ``opts.out``."""
    run = Run.open(opts.run)
    adapters, head = chosen_adapter(run, opts.adapter, "exporting it")
    out = Path(opts.out).expanduser()
    with exclusive(out):
        check_new_out(out, "exported adapter")
        return _export(opts, run, out, adapters or run.adapters(), run.head_state() if head is None else head)


def _export(opts: ExportOptions, run: Run, out: Path, adapters: AdapterSet, head: dict) -> ExportResult:
    if opts.against_original is None:  # the adapter for the run's own base
        if opts.adapter is None:
            run.verify(PEFT_WEIGHTS, "PEFT adapter weights")
            with atomic_directory(out) as tmp:
                shutil.copytree(run.path / "adapter", tmp, dirs_exist_ok=True)
            return ExportResult(out, None)
        with atomic_directory(out) as tmp:
            write_peft_lora(
                tmp, lora_on_base(adapters), adapter_base_name(run.meta), fan_in_fan_out=bool(run.meta.get("conv1d")),
                task_type=run.meta.get("task_type"), dropout=run.meta.get("dropout", 0.0), modules_to_save=head or None,
            )  # fmt: skip
            for name in tokenizer_files(run.path / "adapter"):
                shutil.copy2(run.path / "adapter" / name, tmp / name)
        return ExportResult(out, None)
    kind = run.meta.get("head", "auto")
    extra = {"num_labels": run.meta["num_labels"]} if kind == "seq-cls" else {}
    original = load_model(opts.against_original, head=kind, **extra)
    if body_fingerprint(original.model) != run.meta["original"]["body_fingerprint"]:
        raise SvdadaptError(
            f"{opts.against_original} is not the model {run.path} was built from "
            f"({run.meta['original']['name']}); pass that model to --against-original"
        )
    approximation = None
    if run.quantization is not None:
        layers, approximation = _nearest_on_original(run, adapters, original.model)
    else:
        layers = lora_on_original(adapters)
    with atomic_directory(out) as tmp:
        write_peft_lora(
            tmp,
            layers,
            origin(original)["hub_id"] or ORIGINAL_NOTE,
            fan_in_fan_out=bool(run.meta.get("conv1d")),
            task_type=task_type_of(original.model),
            dropout=run.meta.get("dropout", 0.0),
            modules_to_save=head or None,
        )
        original.tokenizer.save_pretrained(tmp)
        if approximation is not None:
            write_json(tmp / APPROXIMATION_FILE, {"rank": "2r", "layers": approximation})
    return ExportResult(out, opts.against_original, approximation)


APPROXIMATION_FILE = "svdadapt_approximation.json"  # beside an export of a quantized run: what it leaves out


@torch.no_grad()
def _nearest_on_original(run: Run, adapters: AdapterSet, original) -> tuple[dict[str, LoraFactors], dict[str, dict]]:
    """A quantized run as LoRAs on the original: per layer the best rank-2r approximation of
    D = W_q + s·B·diag·A − W (the run's weight minus the original's), and what it leaves relative to
    D (``of_difference``) and to the run's weight W_q + s·B·diag·A (``of_weight``)."""
    base = run.load_base().model
    layers, errors = {}, {}
    for name, adapter in adapters.layers.items():
        module = base.get_submodule(name)
        quantized = backend.is_quantized_layer(module)
        W_base = backend.dequantized_weight(module) if quantized else weight_matrix(module)  # (out, in)
        W = weight_matrix(original.get_submodule(name))  # (out, in)
        run_weight = W_base.double() + adapter.delta()  # (out, in) float64
        D = run_weight - W.double()  # (out, in)
        layers[name], left = nearest_lora(D, 2 * adapter.rank, adapter.scaling, adapter.A.dtype)
        errors[name] = {
            "of_difference": left / max(float(D.norm()), 1e-300),
            "of_weight": left / float(run_weight.norm()),
        }
    return layers, errors
