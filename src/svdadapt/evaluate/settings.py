"""How an evaluation runs: window length, batch size, example limits, templates, lm-eval settings."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.templates import TEMPLATES
from ..options import POSITIVE, Options, at_least, check_positions, opt


@dataclass(kw_only=True)
class WindowOptions(Options):
    """How perplexity is measured: windows of the evaluation text, and how many go through at once
    (``eval``'s and ``compress``'s options)."""

    seq_len: int | None = opt(
        None, "tokens per perplexity window (unset: 2048, or the model's limit if lower)", check=at_least(2)
    )
    max_windows: int | None = opt(None, "evaluate at most this many windows per source (default: all)", check=POSITIVE)
    windows: str = opt(
        "spread", "which windows --max-windows keeps: spread (round robin over the documents, so every document "
        "of a held-out set) or first (the first ones, as before)", choices=["spread", "first"],
    )  # fmt: skip
    batch_size: int = opt(4, "windows or examples per forward pass", check=POSITIVE)

    def check_length(self, max_len: int | None, flag: str = "--seq-len") -> None:
        """Refuse perplexity windows longer than the model's positions (known once it is loaded)."""
        check_positions(flag, self.seq_len, max_len)


@dataclass(kw_only=True)
class EvalSettings(WindowOptions):
    """Settings shared by every perplexity source and task of one evaluation."""

    limit: int | None = opt(None, "evaluate at most this many examples per task (default: all)", check=POSITIVE)
    template: str | None = opt(
        None, "polarity-instruct: prompt template, as in training (default: chat if the tokenizer has one, else "
        "plain)", choices=list(TEMPLATES),
    )  # fmt: skip
    data_dir: str | None = opt(None, "glue: local directory holding validation.* (or dev.*) in csv/tsv/json/jsonl")
    num_fewshot: int | None = opt(None, "lm-eval: few-shot examples (default: each task's own)", check=at_least(0))
    lm_eval_include: str | None = opt(None, "lm-eval: directory of extra task YAML files")
