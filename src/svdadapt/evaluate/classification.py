"""GLUE metrics (and the bundled ``polarity`` twin) of a sequence-classification model on a task's
validation split, with the metrics of the task table in :mod:`svdadapt.data.tasks`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .. import backend
from ..data.tasks import ClassificationTask, load_split
from ..errors import SvdadaptError
from ..models import max_positions

MAX_LENGTH = 512  # tokens per example (longer ones are cut), or the model's limit if lower


def validation_rows(task: ClassificationTask, data_dir: str | None = None) -> list[dict]:
    """The task's validation rows: bundled (polarity), ``DIR/validation.*`` (or ``dev.*``), or the hub."""
    return load_split(task, "validation", data_dir)


def check_classifier(model: nn.Module, task: ClassificationTask) -> None:
    """Refuse a model without a classification head of the task's width."""
    archs = getattr(model.config, "architectures", None) or [type(model).__name__]
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise SvdadaptError(
            f"task {task.name} needs a sequence-classification model (a run trained with --task {task.name}, "
            "or its merged model); this one has no classification head"
        )
    if model.config.num_labels != task.num_labels:
        raise SvdadaptError(
            f"the model's head has {model.config.num_labels} outputs but {task.name} needs {task.num_labels}"
        )


@torch.no_grad()
def classification_logits(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: ClassificationTask,
    rows: Sequence[dict],
    batch_size: int = 8,
    progress: bool = False,
) -> np.ndarray:
    """(n, num_labels) float32 logits (n × 1 for regression), in row order."""
    device = next(model.parameters()).device
    length = min(MAX_LENGTH, max_positions(model) or MAX_LENGTH)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in tqdm(range(0, len(rows), batch_size), desc=f"classify {task.name}", disable=not progress):
            group = rows[start : start + batch_size]
            texts = [[r[c] for r in group] for c in task.columns]
            batch = tokenizer(*texts, truncation=True, max_length=length, padding=True, return_tensors="pt")
            with backend.on(device).forward_products():
                logits = model(**batch.to(device)).logits  # (b, num_labels)
            out.append(logits.float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out)


def classification_metrics(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: ClassificationTask,
    data_dir: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> dict:
    """The task's metrics on its validation split (the first ``limit`` rows)."""
    check_classifier(model, task)
    rows = validation_rows(task, data_dir)[:limit]
    logits = classification_logits(model, tokenizer, task, rows, batch_size, progress)
    labels = np.array([r["label"] for r in rows])
    return {**task.score(logits, labels), "examples": len(rows)}
