"""A ``transformers.Trainer`` that adds the method row's loss terms (e.g. KaSA's regularizers), logs
each term, gives adapter modules and the task head their own learning rates, and checkpoints only
what trains."""

from __future__ import annotations

import math
import os
import time

import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback

from ..adapters.losses import Regularizer
from ..atomic import write_safetensors

TRAINABLE_FILE = "trainable.safetensors"


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
        super().__init__(*args, **kwargs)
        self.regularizer = regularizer
        self.module_lr, self.head_lr = module_lr, head_lr
        self.head_prefixes = head_prefixes
        self._parts: dict[str, float] = {}
        self._parts_count = 0

    # --------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if model.training:
            parts = {"task_loss": float(loss.detach())}
            if self.regularizer is not None:
                extra, terms = self.regularizer(model)
                already_scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
                # a task loss normalised over the accumulated batch must not receive the term once per micro-batch
                loss = loss + (extra / self.args.gradient_accumulation_steps if already_scaled else extra)
                parts.update(terms)
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

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = model or self.model
        saved = load_file(os.path.join(resume_from_checkpoint, TRAINABLE_FILE))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (forward, backward, update; evaluation excluded)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


class EpochLine(TrainerCallback):
    """After each evaluation, print the KaSA seed's log line and track the best epoch."""

    def __init__(self, main_metric: str, higher_is_better: bool = True) -> None:
        self.main_metric = main_metric
        self.higher = higher_is_better
        self.best: tuple[float, int, dict] | None = None
        self.history: list[dict] = []
        self._train_loss = float("nan")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._train_loss = logs.get("task_loss", logs["loss"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = {k.removeprefix("eval_"): v for k, v in (metrics or {}).items()}
        epoch = max(math.ceil((state.epoch or 0) - 1e-9) - 1, 0)
        score = metrics.get(self.main_metric)
        if score is not None and (self.best is None or (score > self.best[0] if self.higher else score < self.best[0])):
            self.best = (score, epoch, metrics)
        timing = ("runtime", "samples_per_second", "steps_per_second", "epoch")
        shown = {k: v for k, v in metrics.items() if k not in timing}
        best = self.best[0] if self.best else float("nan")
        self.history.append({"epoch": epoch, "train_loss": self._train_loss, **metrics})
        print(f"epoch {epoch}: {shown} , current_best_{self.main_metric}: {best} train_loss: {self._train_loss}")
