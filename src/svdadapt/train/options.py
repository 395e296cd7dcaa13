"""What to train on (:class:`TaskOptions`) and how (:class:`TrainingOptions`): the option groups of
``svdadapt train``, read by the training session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data.sources import check_spec
from ..data.tasks import TASK_CHOICES
from ..data.templates import TEMPLATES
from ..errors import SvdadaptError
from ..method_options import method_params
from ..options import FRACTION, NON_NEGATIVE, POSITIVE, Check, Options, group, opt

SCHEDULES = ["linear", "cosine", "constant", "constant_with_warmup"]


@dataclass(kw_only=True)
class TaskOptions(Options):
    """The task and its data."""

    task: str = opt("sft", "what to train on", choices=TASK_CHOICES)
    data: str | None = opt(None, "sft: training source (see `svdadapt calibrate --help`), e.g. polarity, alpaca")
    data_dir: str | None = opt(None, "glue: local directory with train.* and validation.* (or dev.*)")
    template: str | None = opt(None, "sft: prompt template (chat, llama2, plain)", choices=list(TEMPLATES))
    packing: bool = opt(False, "sft: pack several examples into each row of --max-length tokens")
    train_samples: int | None = opt(None, "use at most this many training examples", check=POSITIVE)
    eval_samples: int | None = opt(None, "use at most this many evaluation examples", check=NON_NEGATIVE)
    max_length: int = opt(512, "tokens per example (longer ones are cut; an example left with no response token "
                          "is dropped, with a note)", check=POSITIVE)  # fmt: skip

    def check(self) -> None:
        if self.data is not None:
            check_spec(self.data)  # an unknown name or a missing file, before any model loads


@dataclass(kw_only=True)
class TrainingOptions(Options):
    """The schedule, the optimiser and the method's loss weights; precision, checkpoints and logging."""

    epochs: float = opt(3.0, "training epochs", check=POSITIVE)
    max_steps: int = opt(
        -1, "stop after this many optimizer steps (overrides --epochs; -1: train by --epochs)",
        check=Check(lambda v: v == -1 or v >= 1, "must be -1 (train by --epochs) or positive"),
    )  # fmt: skip
    batch_size: int = opt(8, "examples per device per step", check=POSITIVE)
    eval_batch_size: int = opt(16, "examples per device per evaluation step", check=POSITIVE)
    grad_accum: int = opt(1, "gradient accumulation steps", check=POSITIVE)
    module_lr: float = opt(4e-4, "learning rate of the adapter modules", check=POSITIVE)
    head_lr: float | None = opt(None, "learning rate of the classification head (default: --module-lr)", check=POSITIVE)
    weight_decay: float = opt(0.0, "AdamW weight decay", check=NON_NEGATIVE)
    warmup_ratio: float = opt(0.06, "fraction of steps with linear warm-up", check=FRACTION)
    schedule: str = opt("linear", "learning-rate schedule", choices=SCHEDULES)
    order: str = opt(
        "random", "order of training examples: random, or length (batches of similar length: less padding)",
        choices=["random", "length"],
    )  # fmt: skip
    params: Any = group(method_params("train"))  # the method row's own: kasa's --beta, --gamma, ...
    bf16: bool = opt(False, "train in bfloat16 mixed precision (where the device supports it)")
    fp16: bool = opt(False, "train in float16 mixed precision (CUDA)")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass to save memory")
    logging_steps: int = opt(10, "optimizer steps between log lines", check=POSITIVE)
    eval_steps: int | None = opt(None, "evaluate every N optimizer steps (default: after every epoch)", check=POSITIVE)
    save_checkpoints: bool = opt(
        False, "keep a resumable checkpoint after every epoch (trainable tensors only)", how=True
    )
    save_steps: int | None = opt(
        None, "keep a resumable checkpoint every N optimizer steps (in place of every epoch; implies checkpoints)",
        check=POSITIVE, how=True,
    )  # fmt: skip
    save_total_limit: int = opt(2, "checkpoints kept (the newest)", check=POSITIVE, how=True)
    resume: bool = opt(False, "continue from the newest complete checkpoint in OUT/checkpoints", how=True)
    report_to: str = opt("none", "trackers for Trainer: none, tensorboard, wandb, ... (comma-separated)", how=True)

    @property
    def save_strategy(self) -> str:
        """Trainer's: every --save-steps steps, every epoch (--save-checkpoints), or never."""
        return "steps" if self.save_steps else "epoch" if self.save_checkpoints else "no"

    @property
    def keeps_checkpoints(self) -> bool:
        return self.save_strategy != "no"

    def check(self) -> None:
        if self.bf16 and self.fp16:
            raise SvdadaptError("--bf16 and --fp16 each choose the precision of training; give one of them")
        trackers = [t.strip() for t in self.report_to.split(",") if t.strip() not in ("", "none")]
        if not trackers or trackers == ["all"]:
            return
        from transformers.integrations import get_available_reporting_integrations

        installed = get_available_reporting_integrations()
        missing = [t for t in trackers if t not in installed]
        if missing:
            known = ", ".join(installed) or "none is installed"
            raise SvdadaptError(f"--report-to {missing[0]} is not an installed tracker (installed: {known})")
