"""One training session: datasets for the task, TrainingArguments, the Trainer, and what it yields."""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

from transformers import DataCollatorWithPadding, TrainingArguments

from ..adapters.losses import LOSSES, Regularizer
from ..data import FieldOptions, make_samples, resolve
from ..data.tasks import ClassificationTask, load_rows
from ..errors import SvdadaptError
from ..methods import Method
from ..plots import loss_curves
from .checkpoints import drop_incomplete, last_checkpoint
from .datasets import CausalCollator, classification_features, sft_features
from .options import TaskOptions, TrainingOptions
from .trainer import EpochLine, FiniteGuard, StepTimer, SvdadaptTrainer, epoch_history

# transformers 5 renamed gradient_checkpointing (the old name warns); older versions know only that one
CHECKPOINTING = next(
    name
    for name in ("activation_checkpointing", "gradient_checkpointing")
    if name in TrainingArguments.__dataclass_fields__
)


def head_modules(model) -> list[str]:
    """Top-level modules outside the model body that hold parameters: the task head."""
    body = getattr(model, "base_model_prefix", "")
    return [n for n, m in model.named_children() if n != body and any(True for _ in m.parameters())]


@dataclass
class TrainingData:
    train: list
    eval: list
    collator: object
    metrics: object  # compute_metrics for Trainer, or None (evaluation loss only)
    main: str  # metric that picks the best epoch
    higher_is_better: bool


def _classification(opts: TaskOptions, task, tok) -> TrainingData:
    train_rows, eval_rows = load_rows(task, opts.data_dir)
    if opts.train_samples:
        train_rows = train_rows[: opts.train_samples]
    if opts.eval_samples:
        eval_rows = eval_rows[: opts.eval_samples]
    train_set = classification_features(task, train_rows, tok, opts.max_length)
    eval_set = classification_features(task, eval_rows, tok, opts.max_length)
    metrics = lambda p: task.score(p.predictions, p.label_ids)  # noqa: E731
    return TrainingData(train_set, eval_set, DataCollatorWithPadding(tok), metrics, task.metrics[0], True)


def _sft(opts: TaskOptions, tok, seed: int) -> TrainingData:
    if not opts.data:
        raise SvdadaptError("--task sft needs --data (e.g. --data polarity, --data alpaca:FILE.json)")
    corpus = resolve(opts.data, FieldOptions())
    count = opts.train_samples or (len(corpus) if corpus.kind == "examples" else 1000)
    held = opts.eval_samples if opts.eval_samples is not None else max(1, count // 10)
    samples = make_samples(corpus, tok, count + held, opts.max_length, seed, opts.template)
    if len(samples) < 2:
        raise SvdadaptError(f"{opts.data} gives {len(samples)} example(s); training needs at least 2")
    cut = sum(not s.responses() for s in samples)  # the prompt alone fills --max-length
    if cut:
        print(f"svdadapt: note: {cut} of {len(samples)} examples of {opts.data} have no response token within "
              f"--max-length {opts.max_length} and are left out; raise --max-length to keep them")  # fmt: skip
    shortened = sum(bool(s.responses()) and s.lost > 0 for s in samples)
    if shortened:
        print(
            f"svdadapt: note: {shortened} of {len(samples)} examples of {opts.data} lost response tokens to "
            f"--max-length {opts.max_length} (a response cut, or later turns left out whole); raise it to keep them"
        )
    random.Random(seed).shuffle(samples)
    held = min(held, len(samples) // 2)
    train_set = sft_features(samples[held:], opts.packing, opts.max_length)
    eval_set = sft_features(samples[:held], False, opts.max_length)
    if not train_set:
        raise SvdadaptError(f"{opts.data} gives no training example with response tokens within --max-length")
    if not eval_set:
        raise SvdadaptError(
            f"no held-out example of {opts.data} has response tokens within --max-length {opts.max_length}; "
            "raise --max-length"
        )
    return TrainingData(train_set, eval_set, CausalCollator(tok.pad_token_id), None, "loss", False)


def prepare_data(opts: TaskOptions, task: ClassificationTask | None, tokenizer, seed: int) -> TrainingData:
    """Tokenized training and evaluation sets for ``task`` (None: SFT on ``opts.data``), checked
    before any model work."""
    return _classification(opts, task, tokenizer) if task is not None else _sft(opts, tokenizer, seed)


def nothing_to_resume(run_path: Path, opts: TrainingOptions) -> bool:
    """Whether ``--resume`` of a run trained to the end has nothing to continue: no checkpoint (it was
    trained without checkpoints), or the last one already at --max-steps."""
    checkpoint = last_checkpoint(run_path)
    if checkpoint is None:
        return True
    if opts.max_steps > 0:
        state = Path(checkpoint) / "trainer_state.json"
        return state.is_file() and json.loads(state.read_text()).get("global_step", 0) >= opts.max_steps
    return False  # by epochs: Trainer resumes to the end, or past it with more --epochs


def regularizer(method: Method) -> Regularizer | None:
    """The loss terms the method's row adds, weighted by its train parameters."""
    return LOSSES[method.loss].regularizer(method.stage_values("train")) if method.loss else None


def run_training(
    opts: TrainingOptions, task: ClassificationTask | None, row: Method, seed: int, run, loaded, data: TrainingData,
    progress: bool, writer: bool = True,
) -> dict:  # fmt: skip
    """Train the injected adapters (and a classification task's head) of ``loaded.model`` on ``data``
    with the row's loss (its train parameters set); checkpoints and the loss curve go into the run
    (the ``writer`` of a launch of several processes tidies the checkpoints and draws the curve)."""
    model = loaded.model
    heads = head_modules(model) if task is not None else []
    for name in heads:
        for param in getattr(model, name).parameters():
            param.requires_grad_(True)
    train_set, eval_set, collator, metrics = data.train, data.eval, data.collator, data.metrics
    main, higher = data.main, data.higher_is_better
    if opts.gradient_checkpointing:
        model.enable_input_require_grads()
    out = Path(run.path)
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=opts.epochs,
        max_steps=opts.max_steps,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=opts.eval_batch_size,
        gradient_accumulation_steps=opts.grad_accum,
        learning_rate=opts.module_lr,
        weight_decay=opts.weight_decay,
        warmup_steps=opts.warmup_ratio,  # a float below 1 is a fraction of all steps
        lr_scheduler_type=opts.schedule,
        train_sampling_strategy="group_by_length" if opts.order == "length" else "random",
        logging_steps=opts.logging_steps,
        eval_strategy="steps" if opts.eval_steps else "epoch",
        eval_steps=opts.eval_steps,
        prediction_loss_only=metrics is None,  # SFT: the evaluation loss alone, no gathered logits
        save_strategy=opts.save_strategy,
        save_steps=opts.save_steps or 500,  # Trainer's default, unused unless saving by steps
        save_total_limit=opts.save_total_limit,
        seed=seed,
        data_seed=seed,
        bf16=opts.bf16,
        fp16=opts.fp16,
        **{CHECKPOINTING: opts.gradient_checkpointing},
        report_to=[t for t in opts.report_to.split(",") if t and t != "none"] or "none",
        disable_tqdm=not progress,
        remove_unused_columns=False,
        use_cpu=str(model.device).startswith("cpu"),
        dataloader_num_workers=0,
        save_only_model=False,
    )
    line, timer = EpochLine(main, higher), StepTimer()
    trainer = SvdadaptTrainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set, data_collator=collator,
        compute_metrics=metrics, callbacks=[line, timer, FiniteGuard()], regularizer=regularizer(row),
        module_lr=opts.module_lr, head_lr=opts.head_lr, head_prefixes=tuple(f"{h}." for h in heads),
    )  # fmt: skip
    if opts.resume and writer:
        for dropped in drop_incomplete(out):
            print(f"svdadapt: {dropped} was cut short while being saved; continuing from the checkpoint before it")
    checkpoint = last_checkpoint(out) if opts.resume else None
    trainer.train(resume_from_checkpoint=checkpoint)
    if writer and (out / "checkpoints").is_dir() and not any((out / "checkpoints").iterdir()):
        (out / "checkpoints").rmdir()  # Trainer makes its output folder even when it keeps nothing there
    model.eval()
    title = f"{run.meta['method']} on {task.name if task is not None else 'sft'}"
    curve = None
    if writer:
        curve = loss_curves(trainer.state.log_history, out / "loss_curve.png", title)
    history, best = epoch_history(trainer.state.log_history, main, higher)
    steps = trainer.state.global_step
    return {
        "train_loss": trainer.loss_sum() / max(steps, 1),  # over every step, those before a resume included
        "steps": steps,
        "train_examples": len(train_set),
        "eval_examples": len(eval_set),
        "main_metric": main,
        "best": best,
        "history": history,
        "log": trainer.state.log_history,
        "loss_curve": curve.name if curve else None,  # in the run: no path of this machine
        "steps_this_session": len(timer.seconds),  # 0: a resumed checkpoint was already the end
        "train_seconds_per_step": sum(timer.seconds) / max(len(timer.seconds), 1),
        "step_seconds_median": statistics.median(timer.seconds) if timer.seconds else None,
        "head_state": {h: {k: v.detach().cpu() for k, v in getattr(model, h).state_dict().items()} for h in heads},
    }
