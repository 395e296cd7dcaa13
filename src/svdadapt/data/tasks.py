"""The task table, read by training and evaluation: GLUE sequence classification (and its bundled
offline twin) with each task's metrics, and instruction fine-tuning of causal LMs.

``--task glue:cola`` (cola, sst2, mrpc, stsb, qnli, rte) reads ``nyu-mll/glue`` through ``datasets``,
or, with ``--data-dir DIR``, local files ``DIR/train.*`` and ``DIR/validation.*`` (or ``dev.*``) in
csv, tsv, json or jsonl with the hub's column names. ``--task polarity`` is the bundled 200
movie-review sentences as binary classification (160 train / 40 validation). ``--task sft`` trains a
causal LM on the instruction examples of ``--data``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SvdadaptError, unknown
from ..hub import require_hub


def _accuracy(pred, labels) -> float:
    return float((pred == labels).mean())


def _matthews(pred, labels) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, pred))


def _f1(pred, labels) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(labels, pred))


def _pearson(pred, labels) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(pred, labels)[0])


def _spearman(pred, labels) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(pred, labels)[0])


METRICS: dict[str, Callable] = {
    "accuracy": _accuracy,
    "matthews_correlation": _matthews,
    "f1": _f1,
    "pearson": _pearson,
    "spearmanr": _spearman,
}


@dataclass(frozen=True)
class ClassificationTask:
    """A row of :data:`CLASSIFICATION_TASKS`; ``num_labels == 1`` means regression."""

    name: str
    columns: tuple[str, ...]  # one or two text columns
    num_labels: int
    metrics: tuple[str, ...]  # the first is the one "best epoch" is chosen by
    hub: tuple[str, str] | None = None  # (repo, config)

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    def score(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        if self.regression:
            pred = predictions.reshape(-1)
        else:
            pred = predictions.argmax(-1)
        return {m: METRICS[m](pred, labels) for m in self.metrics}


CLASSIFICATION_TASKS = {
    t.name: t
    for t in (
        ClassificationTask("cola", ("sentence",), 2, ("matthews_correlation",), ("nyu-mll/glue", "cola")),
        ClassificationTask("sst2", ("sentence",), 2, ("accuracy",), ("nyu-mll/glue", "sst2")),
        ClassificationTask("mrpc", ("sentence1", "sentence2"), 2, ("accuracy", "f1"), ("nyu-mll/glue", "mrpc")),
        ClassificationTask("stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearmanr"), ("nyu-mll/glue", "stsb")),
        ClassificationTask("qnli", ("question", "sentence"), 2, ("accuracy",), ("nyu-mll/glue", "qnli")),
        ClassificationTask("rte", ("sentence1", "sentence2"), 2, ("accuracy",), ("nyu-mll/glue", "rte")),
        ClassificationTask("polarity", ("sentence",), 2, ("accuracy",)),
    )
}
TASK_CHOICES = ["sft", "polarity", *[f"glue:{n}" for n in CLASSIFICATION_TASKS if n != "polarity"]]


def classification_task(spec: str) -> ClassificationTask | None:
    """The classification row for ``--task``, None for ``sft``; unknown names are an error."""
    if spec == "sft":
        return None
    name = spec.removeprefix("glue:")
    if name not in CLASSIFICATION_TASKS or (spec.startswith("glue:") and name == "polarity"):
        raise unknown("task", spec, TASK_CHOICES)
    return CLASSIFICATION_TASKS[name]


# ------------------------------------------------------------------------------------------ rows
def _read_table(path: Path) -> list[dict]:
    if path.suffix in (".json", ".jsonl"):
        from .records import read_records

        return read_records(path)
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter=delimiter))
    if not rows:
        raise SvdadaptError(f"{path} has no rows (a header line with the column names is needed)")
    return rows


def _find_split(directory: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        for suffix in (".tsv", ".csv", ".jsonl", ".json"):
            if (directory / f"{name}{suffix}").is_file():
                return directory / f"{name}{suffix}"
    raise SvdadaptError(f"{directory} has no {names[0]} file ({'/'.join(names)}.tsv|csv|json|jsonl)")


def _check_rows(task: ClassificationTask, rows: list[dict], where: str) -> list[dict]:
    if not rows:
        raise SvdadaptError(f"{where} has no examples")
    first = rows[0]
    for column in (*task.columns, "label"):
        if column not in first:
            raise SvdadaptError(f"{where} has no {column!r} column (it has {', '.join(first)}); {task.name} needs it")
    checked = []
    for i, row in enumerate(rows):
        label = row["label"]
        try:
            value = float(label) if task.regression else int(str(label).strip())
        except (TypeError, ValueError):
            kind = "a number" if task.regression else f"an integer class in 0..{task.num_labels - 1}"
            raise SvdadaptError(f"{where} row {i}: label {label!r} is not {kind}") from None
        if not task.regression and not 0 <= value < task.num_labels:
            raise SvdadaptError(f"{where} row {i}: label {value} is outside 0..{task.num_labels - 1} for {task.name}")
        checked.append({**{c: str(row[c]) for c in task.columns}, "label": value})
    return checked


def _polarity_rows() -> tuple[list[dict], list[dict]]:
    from ..assets import polarity_split

    def rows(heldout: bool) -> list[dict]:
        return [{"sentence": s, "label": int(label == "positive")} for s, label in polarity_split(heldout)]

    return rows(False), rows(True)


SPLIT_FILES = {"train": ("train",), "validation": ("validation", "dev")}  # local file names per split


def load_split(task: ClassificationTask, split: str, data_dir: str | None = None) -> list[dict]:
    """One split ("train" or "validation") with the task's text columns and a checked ``label``:
    bundled (polarity), local files ``DIR/<split>.*`` (``dev.*`` for validation), or the hub."""
    if task.name == "polarity":
        rows = _polarity_rows()[split == "validation"]
    elif data_dir:
        directory = Path(data_dir).expanduser()
        if not directory.is_dir():
            raise SvdadaptError(f"--data-dir {directory} is not a directory")
        rows = _read_table(_find_split(directory, SPLIT_FILES[split]))
    else:
        repo, config = task.hub
        require_hub(f"GLUE {task.name}", f"pass --data-dir DIR holding train.tsv and dev.tsv of {task.name}")
        import datasets

        try:
            rows = list(datasets.load_dataset(repo, config, split=split))
        except Exception as exc:  # noqa: BLE001 — datasets raises many types for "unreachable"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SvdadaptError(f"could not load GLUE {task.name} ({first}); pass --data-dir") from None
    return _check_rows(task, rows, f"{task.name} {split}")


def load_rows(task: ClassificationTask, data_dir: str | None) -> tuple[list[dict], list[dict]]:
    """(train rows, validation rows), each checked as :func:`load_split` does."""
    return load_split(task, "train", data_dir), load_split(task, "validation", data_dir)


def dump_rows(rows: list[dict], path: Path) -> None:
    """Write rows as jsonl (used by tests and examples to make local GLUE-format files)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
