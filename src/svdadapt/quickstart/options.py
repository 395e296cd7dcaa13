"""The quickstart's flags: what to run it on and how long, every value checked."""

from __future__ import annotations

from dataclasses import dataclass

from ..methods import METHODS, get_method
from ..options import POSITIVE, Options, at_least, opt

DEFAULT_METHODS = ("corda-kpa", "lora", "kasa", "kasa-context")


@dataclass(kw_only=True)
class QuickstartOptions(Options):
    """Calibrate the embedded SmolLM2 on bundled Wikipedia text, build corda-kpa, lora and kasa (plain and
    context truncation) adapters, fine-tune each on the bundled polarity task, and compare task accuracy
    and held-out perplexity before and after, into a report folder (no hub access; minutes on a 2-core CPU)."""

    out: str = opt("svdadapt-quickstart", "directory for everything the quickstart writes")
    model: str = opt("default", "model to run it on (the embedded SmolLM2 by default)")
    methods: str = opt(
        ",".join(DEFAULT_METHODS),
        f"methods to compare, comma-separated rows of the methods table: {', '.join(METHODS)}",
    )
    rank: int = opt(16, "adapter rank for every method (alpha = rank)", check=POSITIVE)
    calib_samples: int = opt(32, "calibration windows of bundled wiki", check=POSITIVE)
    calib_seq_len: int = opt(256, "tokens per calibration window", check=POSITIVE)
    epochs: float = opt(1.0, "fine-tuning epochs on the polarity training reviews (144; 16 held for eval loss)",
                        check=POSITIVE)  # fmt: skip
    module_lr: float = opt(5e-4, "adapter learning rate", check=POSITIVE)
    eval_windows: int = opt(12, "held-out wiki perplexity windows", check=POSITIVE)
    eval_seq_len: int = opt(256, "tokens per perplexity window", check=at_least(2))
    device: str | None = opt(None, "cpu, cuda or cuda:N (default: cuda when available)")

    def check(self) -> None:
        for name in self.method_names:
            get_method(name)  # a row of the table, or one line naming the rows

    @property
    def method_names(self) -> list[str]:
        return list(dict.fromkeys(m.strip() for m in self.methods.split(",") if m.strip()))
