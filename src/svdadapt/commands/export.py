"""``svdadapt export``: a run's adapter as a stock PEFT LoRA, for its own base or for the untouched
original model (rank 2r for residual and KaSA runs; see adapters.peft_format.lora_on_original)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..adapters.peft_format import lora_on_base, lora_on_original, write_peft_lora
from ..adapters.state import AdapterSet
from ..atomic import atomic_directory, exclusive
from ..errors import SvdadaptError
from ..fingerprint import body_fingerprint
from ..models import load_model, origin
from ..options import Options, opt
from ..peft_handle import adapter_option, chosen_adapter
from ..runs import PEFT_WEIGHTS, Run, adapter_base_name, check_new_out, task_type_of, tokenizer_files

ORIGINAL_NOTE = (
    "the original model this adapter was exported against (svdadapt export --against-original): load it with "
    "from_pretrained and pass the model and this folder to peft.PeftModel.from_pretrained"
)  # where no hub id names it: never a path of the machine that wrote it


@dataclass(kw_only=True)
class ExportOptions(Options):
    """Write a run's adapter as a stock PEFT LoRA that applies to the untouched original model (rank
    2r for residual and KaSA runs), so the run's outputs are reproduced without its residual base."""

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

    def summary(self) -> str:
        target = "the original model" if self.against_original else "the run's base"
        return (
            f"PEFT LoRA for {target}: {self.out}\n"
            f"  load it with PeftModel.from_pretrained(<{target}>, {str(self.out)!r})"
        )


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
    with atomic_directory(out) as tmp:
        write_peft_lora(
            tmp,
            lora_on_original(adapters),
            origin(original)["hub_id"] or ORIGINAL_NOTE,
            fan_in_fan_out=bool(run.meta.get("conv1d")),
            task_type=task_type_of(original.model),
            dropout=run.meta.get("dropout", 0.0),
            modules_to_save=head or None,
        )
        original.tokenizer.save_pretrained(tmp)
    return ExportResult(out, opts.against_original)
