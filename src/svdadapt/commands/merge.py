"""``svdadapt merge``: fold a run's adapter into its base → an ordinary dense model directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import backend
from ..adapters.inject import merge_and_unload
from ..atomic import atomic_directory, exclusive, require_finite, saved_pretrained
from ..options import Options, opt
from ..peft_handle import adapter_option, chosen_adapter
from ..runs import Run, check_new_out


@dataclass(kw_only=True)
class MergeOptions(Options):
    """Fold a run's adapter (built or trained) into its frozen base and write an ordinary transformers
    model directory that needs neither svdadapt nor PEFT (a quantized base is dequantized first: the
    merged model is float)."""

    run: str = opt(help="run directory (from svdadapt build or train)", positional=True)
    out: str = opt(help="directory for the merged model")
    device: str = opt("cpu", "device to merge on")
    adapter: str | None = adapter_option()


@dataclass
class MergeResult:
    out: Path

    def summary(self) -> str:
        return f"merged model: {self.out}"


def merge(opts: MergeOptions, progress: bool = True) -> MergeResult:
    """Write the run's model (base + adapter, float64 sums cast once, any trained head) to ``opts.out``."""
    run = Run.open(opts.run)
    adapters, head = chosen_adapter(run, opts.adapter, "merging it")
    out = Path(opts.out).expanduser()
    with exclusive(out):
        check_new_out(out, "merged model")
        loaded = run.load_adapted(device=opts.device, adapters=adapters, head=head)
        if run.quantization is not None:  # a 4-/8-bit base: its dequantized values, in float32
            backend.dequantize_model(loaded.model)
        merge_and_unload(loaded.model)
        require_finite(dict(loaded.model.named_parameters()), f"the merged model of {run.path}")
        with atomic_directory(out) as tmp:
            model = loaded.model
            saved_pretrained(lambda: model.save_pretrained(tmp, safe_serialization=True), out, "the merged model")
            saved_pretrained(lambda: loaded.tokenizer.save_pretrained(tmp), out, "the tokenizer")
    return MergeResult(out)
