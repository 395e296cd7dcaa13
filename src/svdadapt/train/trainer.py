"""A ``transformers.Trainer`` that adds the method row's loss terms (e.g. KaSA's regularizers), logs
each term, gives adapter modules and the task head their own learning rates, and checkpoints only
what trains."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from .. import backend
from ..adapters.losses import Regularizer
from ..atomic import write_json, write_safetensors
from ..errors import SvdadaptError
from ..files import load_tensors, read_json
from ..linalg import all_finite
from ..runner import positions_to_keep
from .checkpoints import PROGRESS_FILE, TRAINABLE_FILE
from .datasets import IGNORE


class SvdadaptTrainer(Trainer):
    def __init__(
        self,
        *args,
        regularizer: Regularizer | None = None,
        module_lr: float | None = None,
        head_lr: float | None = None,
        head_prefixes: tuple[str, ...] = (),
        **kwargs,
    ) -> None:
        with backend.adapters_attached(kwargs.get("model", args[0] if args else None)):
            super().__init__(
                *args, **kwargs
            )  # a quantized base with svdadapt's adapters is no "purely quantized" model
        self.regularizer = regularizer
        self.resumed_loss_sum = 0.0  # what the checkpoint resumed from had summed
        self.module_lr, self.head_lr = module_lr, head_lr
        self.head_prefixes = head_prefixes
        self._parts: dict[str, float] = {}
        self._parts_count = 0

    # --------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = on_labelled_positions(model, inputs)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if model.training:
            parts = {"task_loss": float(loss.detach())}
            if self.regularizer is not None:
                extra, terms = self.regularizer(model)
                already_scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
                # a task loss normalised over the accumulated batch must not receive the term once per micro-batch
                loss = loss + (extra / self.args.gradient_accumulation_steps if already_scaled else extra)
                parts.update(terms)
            diverged = [f"{k} is {v}" for k, v in parts.items() if not math.isfinite(v)]
            if diverged:
                raise Diverged(self.state.global_step + 1, diverged[0])
            for key, value in parts.items():
                self._parts[key] = self._parts.get(key, 0.0) + value
            self._parts_count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._parts_count:
            logs.update({k: round(v / self._parts_count, 6) for k, v in self._parts.items()})
            self._parts, self._parts_count = {}, 0
        super().log(logs, start_time)

    # --------------------------------------------------------------------------- optimizer
    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        base_lr = optimizer_kwargs.pop("lr", self.args.learning_rate)
        head, adapters = [], []
        for name, param in model.named_parameters():
            if param.requires_grad:
                (head if name.startswith(self.head_prefixes) and self.head_prefixes else adapters).append(param)
        groups = [
            {"params": adapters, "lr": self.module_lr or base_lr, "weight_decay": self.args.weight_decay},
            {"params": head, "lr": self.head_lr or base_lr, "weight_decay": self.args.weight_decay},
        ]
        self.optimizer = optimizer_cls([g for g in groups if g["params"]], **optimizer_kwargs)
        return self.optimizer

    # --------------------------------------------------------------------------- checkpoints
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Checkpoints hold the trainable tensors only (adapters, head), not the frozen model."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        trainable = {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}
        write_safetensors(os.path.join(output_dir, TRAINABLE_FILE), trainable)
        progress = {"loss_sum": self.loss_sum(), "steps": self.state.global_step}
        write_json(os.path.join(output_dir, PROGRESS_FILE), progress)

    def loss_sum(self) -> float:
        """The training loss summed over every step so far, a resumed session's earlier ones included
        (Trainer's own ``training_loss`` covers only the steps of one ``train()`` call)."""
        pending = getattr(self, "_tr_loss", None)  # accumulated since the last log (transformers ≥ 5)
        pending = float(pending) if isinstance(pending, torch.Tensor) else 0.0
        return self.resumed_loss_sum + getattr(self, "_total_loss_scalar", 0.0) + pending

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = model or self.model
        path = Path(resume_from_checkpoint) / TRAINABLE_FILE
        fix = f"delete {resume_from_checkpoint} to resume from the checkpoint before it"
        saved = load_tensors(path, "training checkpoint", fix)
        progress_file = Path(resume_from_checkpoint) / PROGRESS_FILE
        if progress_file.is_file():
            self.resumed_loss_sum = float(read_json(progress_file, "training progress", fix).get("loss_sum", 0.0))
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if set(saved) != set(params) or any(saved[n].shape != params[n].shape for n in saved):
            raise SvdadaptError(f"training checkpoint {path} holds other tensors than this run trains; {fix}")
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


def on_labelled_positions(model, inputs: dict) -> dict:
    """Causal-LM ``inputs`` rewritten so the model runs its vocabulary-wide head only at positions
    whose next token is labelled in some row (instruction tuning labels the response alone: the
    prompt and padding get no logits), with the same loss: transformers' ``logits_to_keep`` picks
    positions p₀ < … < p_{k-1} (plus p_{k-1} again, whose target is ignored), and the labels become
    [-100, y(p₀ + 1), …, y(p_{k-1} + 1)], which the model's own shift-by-one loss pairs with them.
    Other inputs (classification, models without ``logits_to_keep``) are returned unchanged."""
    labels, ids = inputs.get("labels"), inputs.get("input_ids")
    if labels is None or ids is None or labels.dim() != 2 or labels.shape != ids.shape:
        return inputs
    following = labels[:, 1:]  # (b, L - 1): the token position t predicts
    keep = positions_to_keep(model, following != IGNORE)  # (k,)
    if keep is None:
        return inputs
    ignored = torch.full_like(labels[:, :1], IGNORE)  # (b, 1)
    return {
        **inputs,
        "labels": torch.cat([ignored, following[:, keep]], dim=1),  # (b, k + 1)
        "logits_to_keep": torch.cat([keep, keep[-1:]]),  # (k + 1,)
    }


class Diverged(SvdadaptError):
    """Training stopped because the loss or the adapter became non-finite."""

    def __init__(self, step: int, what: str) -> None:
        super().__init__(
            f"training diverged at step {step} ({what}); the run is left unfinished (not marked trained), with "
            "its last checkpoint if it kept any: lower --module-lr (or the loss weights) and train again"
        )


class FiniteGuard(TrainerCallback):
    """After every optimizer step, before anything is logged or saved: the trainable tensors are
    finite, or training stops (:class:`Diverged`), so no non-finite adapter reaches a checkpoint."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        for name, param in model.named_parameters():
            if param.requires_grad and not all_finite(param.detach()):
                raise Diverged(state.global_step, f"{name} is not finite")


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (forward, backward, update; evaluation excluded)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


TIMING = ("runtime", "samples_per_second", "steps_per_second", "epoch")


def epoch_history(log_history: list[dict], main_metric: str, higher_is_better: bool) -> tuple[list[dict], dict | None]:
    """Per evaluated epoch, its metrics and the task loss logged last before it; and the best epoch by
    ``main_metric``. Read from Trainer's log, which a resumed training restores whole."""
    history: list[dict] = []
    best: dict | None = None
    train_loss = None
    for entry in log_history:
        if "loss" in entry:
            train_loss = entry.get("task_loss", entry["loss"])
        if not any(key.startswith("eval_") for key in entry):
            continue
        metrics = {k.removeprefix("eval_"): v for k, v in entry.items() if k.startswith("eval_")}
        epoch = max(math.ceil((entry.get("epoch") or 0) - 1e-9) - 1, 0)
        history.append({"epoch": epoch, "step": entry.get("step"), "train_loss": train_loss, **metrics})
        score = metrics.get(main_metric)
        better = best is None or (score > best[main_metric] if higher_is_better else score < best[main_metric])
        if score is not None and better:
            best = {"epoch": epoch, "step": entry.get("step"), main_metric: score, "metrics": metrics}
    return history, best


class EpochLine(TrainerCallback):
    """Log the training loss at the end of every epoch, and after each evaluation print the KaSA
    seed's line (with the best so far, read from the whole log; evaluated by steps, the step too)."""

    def __init__(self, main_metric: str, higher_is_better: bool = True) -> None:
        self.main_metric = main_metric
        self.higher = higher_is_better

    def on_epoch_end(self, args, state, control, **kwargs):
        control.should_log = True  # every epoch's line has its own training loss

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        latest_entry = {**(metrics or {}), "step": state.global_step}
        history, best = epoch_history([*state.log_history, latest_entry], self.main_metric, self.higher)
        latest = history[-1]
        shown = {k: v for k, v in latest.items() if k not in (*TIMING, "train_loss", "step")}
        best_score = best[self.main_metric] if best else float("nan")
        by_steps = args.eval_strategy == "steps"  # --eval-steps: the step too
        when = f"step {latest['step']} (epoch {latest['epoch']})" if by_steps else f"epoch {latest['epoch']}"
        print(f"{when}: {shown} , current_best_{self.main_metric}: {best_score} train_loss: {latest['train_loss']}")
