"""``svdadapt quickstart``: the main job on the embedded defaults, with no hub access."""

from __future__ import annotations

from dataclasses import dataclass

from .options import opt


@dataclass(kw_only=True)
class QuickstartOptions:
    """Calibrate the embedded SmolLM2-135M-Instruct on the bundled Wikipedia text and summarize the
    covariance store it wrote (reruns reuse or resume it)."""

    out: str = opt("svdadapt-quickstart", "directory for everything the quickstart writes")
    samples: int = opt(32, "calibration samples")
    seq_len: int = opt(256, "tokens per calibration sample")
    device: str | None = opt(None, "cpu, cuda or cuda:N (default: cuda when available)")


def quickstart(opts: QuickstartOptions) -> None:
    from pathlib import Path

    from .calibrate.job import CalibrateOptions, calibrate, summary

    store = calibrate(
        CalibrateOptions(
            model="default", data="wiki", samples=opts.samples, seq_len=opts.seq_len, batch_size=8,
            device=opts.device, out=str(Path(opts.out) / "covariances"), resume=True,
        )
    )  # fmt: skip
    print(summary(store))
