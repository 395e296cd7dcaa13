"""``svdadapt train``: fine-tune a run's adapters (building the run first if needed) through
``transformers.Trainer`` — GLUE-style classification or instruction SFT of causal LMs."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..adapters.inject import adapter_state, inject
from ..atomic import write_json
from ..backend import is_main_process, resolve_device, world_size
from ..build.job import BuildOptions, build
from ..calibrate.job import MODEL_HELP
from ..errors import SvdadaptError
from ..methods import METHODS, TRUNCATIONS
from ..options import opt
from ..runs import RUN_FILE, Run, copy_run, update_run
from .tasks import TASK_CHOICES, classification_task

NO_RUN = "give --model, --method and --out to build a run and train it, or an existing run: svdadapt train RUN"
SCHEDULES = ["linear", "cosine", "constant", "constant_with_warmup"]


@dataclass(kw_only=True)
class TrainOptions:
    """Fine-tune adapters on a task with transformers.Trainer: GLUE-style sequence classification
    (the task head trains in full) or instruction fine-tuning of a causal LM (loss on responses)."""

    out: str | None = opt(
        None,
        "run directory: built here first, or with RUN a copy of RUN trained here (default with RUN: "
        "train RUN in place)",
    )
    task: str = opt("sft", "what to train on", choices=TASK_CHOICES)
    run: str | None = opt(
        None, "an existing run (from svdadapt build) to train, in place of --model/--method", positional=True, nargs="?"
    )
    model: str | None = opt(None, MODEL_HELP)
    method: str | None = opt(None, "adapter method when building the run here", choices=list(METHODS))
    rank: int = opt(8, "adapter rank r")
    alpha: float | None = opt(None, "LoRA alpha (default: alpha = r)")
    targets: str | None = opt(None, "layers to adapt (default: every linear layer in blocks)")
    rank_pattern: str | None = opt(None, "per-layer ranks: PATTERN=R,...")
    alpha_pattern: str | None = opt(None, "per-layer alphas: PATTERN=A,...")
    dropout: float = opt(0.0, "adapter dropout")
    truncation: str | None = opt(None, "kasa: plain or context truncation", choices=list(TRUNCATIONS))
    covariances: str | None = opt(None, "covariance store for context decompositions")
    calib_data: str | None = opt(None, "calibrate on the fly on this source (CorDA, kasa --truncation context)")
    calib_samples: int = opt(256, "calibration samples for --calib-data")
    calib_seq_len: int = opt(2048, "calibration sequence length for --calib-data")
    data: str | None = opt(None, "sft: training source (see `svdadapt calibrate --help`), e.g. polarity, alpaca")
    data_dir: str | None = opt(None, "glue: local directory with train.* and validation.* (or dev.*)")
    template: str | None = opt(None, "sft: prompt template (chat, llama2, plain)")
    packing: bool = opt(False, "sft: pack several examples into each row of --max-length tokens")
    train_samples: int | None = opt(None, "use at most this many training examples")
    eval_samples: int | None = opt(None, "use at most this many evaluation examples")
    max_length: int = opt(512, "tokens per example (longer ones are cut)")
    epochs: float = opt(3.0, "training epochs")
    max_steps: int = opt(-1, "stop after this many optimizer steps (overrides --epochs when > 0)")
    batch_size: int = opt(8, "examples per device per step")
    eval_batch_size: int = opt(16, "examples per device per evaluation step")
    grad_accum: int = opt(1, "gradient accumulation steps")
    module_lr: float = opt(4e-4, "learning rate of the adapter modules")
    head_lr: float | None = opt(None, "learning rate of the classification head (default: --module-lr)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_ratio: float = opt(0.06, "fraction of steps with linear warm-up")
    schedule: str = opt("linear", "learning-rate schedule", choices=SCHEDULES)
    beta: float = opt(1e-4, "kasa: weight of the singular-value term ‖ΔΣ‖²")
    gamma: float = opt(1e-3, "kasa: weight of the orthogonality term ‖BᵀB − I‖ + ‖AAᵀ − I‖")
    seed: int = opt(0, "seed for initialisation, data order and dropout")
    bf16: bool = opt(False, "train in bfloat16 mixed precision (where the device supports it)")
    fp16: bool = opt(False, "train in float16 mixed precision (CUDA)")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass to save memory")
    logging_steps: int = opt(10, "optimizer steps between log lines")
    save_checkpoints: bool = opt(False, "keep a resumable checkpoint after every epoch (trainable tensors only)")
    resume: bool = opt(False, "continue from the newest checkpoint in OUT/checkpoints")
    report_to: str = opt("none", "trackers for Trainer: none, tensorboard, wandb, ... (comma-separated)")
    device: str | None = opt(None, "cpu, cuda or cuda:N (default: cuda when available)")


def _validate(opts: TrainOptions) -> None:
    if not opts.out and not opts.run:
        raise SvdadaptError(NO_RUN)
    for name in ("beta", "gamma"):
        if getattr(opts, name) < 0:
            raise SvdadaptError(f"--{name} must be non-negative, got {getattr(opts, name)}")
    for name in ("rank", "batch_size", "eval_batch_size", "grad_accum", "max_length", "logging_steps"):
        if getattr(opts, name) < 1:
            raise SvdadaptError(f"--{name.replace('_', '-')} must be positive, got {getattr(opts, name)}")
    for name in ("module_lr", "epochs"):
        if not getattr(opts, name) > 0:
            raise SvdadaptError(f"--{name.replace('_', '-')} must be positive, got {getattr(opts, name)}")
    if opts.head_lr is not None and not opts.head_lr > 0:
        raise SvdadaptError(f"--head-lr must be positive, got {opts.head_lr}")
    if not 0 <= opts.warmup_ratio < 1:
        raise SvdadaptError(f"--warmup-ratio must be in [0, 1), got {opts.warmup_ratio}")
    if opts.train_samples is not None and opts.train_samples < 1:
        raise SvdadaptError(f"--train-samples must be positive, got {opts.train_samples}")


def prepare_run(opts: TrainOptions, progress: bool) -> Run:
    """The run to train: `RUN`, an existing run at OUT (resume), or one built into OUT now."""
    task = classification_task(opts.task)
    head = "seq-cls" if task is not None else "auto"
    if opts.run:
        run = Run.open(opts.run)
        if task is not None and run.meta.get("head") != "seq-cls":
            raise SvdadaptError(
                f"{opts.run} was built without a classification head; build it with --head seq-cls "
                f"--num-labels {task.num_labels}, or let train build the run"
            )
        if task is not None and run.meta.get("num_labels") != task.num_labels:
            kind = "a regression task (1 output)" if task.regression else f"{task.num_labels} classes"
            raise SvdadaptError(
                f"{opts.run} has a head with {run.meta.get('num_labels')} outputs but {task.name} is {kind}; "
                f"build it with --num-labels {task.num_labels}"
            )
        if task is None and run.meta.get("head") == "seq-cls":
            raise SvdadaptError(f"{opts.run} has a classification head; --task sft needs a causal LM run")
        out = Path(opts.out).expanduser() if opts.out else run.path
        if out.resolve() == run.path.resolve():
            return run
        if opts.resume and (out / RUN_FILE).is_file():
            return Run.open(out)
        if world_size() > 1:
            raise SvdadaptError("under a multi-process launcher, train RUN in place (leave out --out)")
        return copy_run(run, out)
    if not opts.out:
        raise SvdadaptError(NO_RUN)
    out = Path(opts.out).expanduser()
    if opts.resume and (out / RUN_FILE).is_file():
        return Run.open(out)
    if not opts.model or not opts.method:
        raise SvdadaptError(NO_RUN)
    if world_size() > 1:
        raise SvdadaptError(
            "under a multi-process launcher, train an existing run: `svdadapt build ... --out RUN` first, "
            "then launch `svdadapt train RUN ...`"
        )
    build_opts = BuildOptions(
        model=opts.model, method=opts.method, rank=opts.rank, alpha=opts.alpha, out=str(out),
        covariances=opts.covariances, data=opts.calib_data, samples=opts.calib_samples,
        seq_len=opts.calib_seq_len, targets=opts.targets, rank_pattern=opts.rank_pattern,
        alpha_pattern=opts.alpha_pattern, dropout=opts.dropout, truncation=opts.truncation,
        device=opts.device, seed=opts.seed, head=head, num_labels=task.num_labels if task else None,
    )  # fmt: skip
    return build(build_opts, progress=progress)


def _tokenizer(opts: TrainOptions):
    from ..models import load_tokenizer, resolve_location

    if opts.run:
        return load_tokenizer(Run.open(opts.run).base_location)
    if opts.resume and (Path(opts.out).expanduser() / RUN_FILE).is_file():
        return load_tokenizer(Run.open(opts.out).base_location)
    if not opts.model:
        raise SvdadaptError(NO_RUN)
    return load_tokenizer(resolve_location(opts.model))


def train(opts: TrainOptions, progress: bool = True) -> Run:
    """Train as the CLI does; returns the updated run (stage "trained")."""
    from .session import prepare_data, run_training

    _validate(opts)
    device = resolve_device(opts.device)
    started = time.monotonic()
    data = prepare_data(opts, _tokenizer(opts))  # bad data fails before a run is built
    run = prepare_run(opts, progress)
    loaded = run.load_base(device=device)
    inject(loaded.model, run.adapters(), dropout=run.meta.get("dropout", opts.dropout))
    result = run_training(opts, run, loaded, data, progress)
    head = result.pop("head_state")
    if not is_main_process():  # one writer: the other processes of a launch only trained
        return run
    trained = adapter_state(loaded.model, run.meta["method"])
    summary = {**result, "seconds": round(time.monotonic() - started, 1), "task": opts.task}
    run = update_run(run, trained, head=head or None, training=summary)
    write_json(run.path / "train_results.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("history", "log")}, indent=None))
    return run
