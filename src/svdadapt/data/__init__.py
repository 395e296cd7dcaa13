"""Calibration and training data: sources, templates, tokenized samples and batches, and the task
table (tasks.py) that training and evaluation read."""

from .batching import make_batches, pad_batch, samples_digest
from .records import Example
from .samples import Sample, make_samples
from .sources import EVAL_SPLITS, SOURCES, Corpus, FieldOptions, resolve
from .templates import TEMPLATES, get_template

__all__ = [
    "EVAL_SPLITS",
    "SOURCES",
    "TEMPLATES",
    "Corpus",
    "Example",
    "FieldOptions",
    "Sample",
    "get_template",
    "make_batches",
    "samples_digest",
    "make_samples",
    "pad_batch",
    "resolve",
]
