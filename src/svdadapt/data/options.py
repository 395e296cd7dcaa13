"""The data options shared by every command that reads a source (``--data`` and friends)."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..errors import SvdadaptError
from ..options import opt
from .batching import make_batches
from .samples import Sample, make_samples
from .sources import FieldOptions, resolve
from .templates import TEMPLATES


@dataclass(kw_only=True)
class DataOptions:
    data: str = opt(
        help="source: wiki, wiki-heldout, news, polarity, nqopen, triviaqa, wikitext2, ptb, metamath, "
        "codefeedback, wizardlm, alpaca; NAME:FILE for a local copy of NAME; a .txt/.json/.jsonl file; "
        "or hf:REPO[:CONFIG]",
    )
    samples: int = opt(256, "number of calibration samples")
    seq_len: int = opt(2048, "tokens per text window; longer examples are cut")
    batch_size: int = opt(8, "samples per forward pass")
    seed: int = opt(0, "seed for sampling windows and examples")
    template: str | None = opt(
        None, "prompt template for instruction examples (default: chat if the tokenizer has one, else plain)",
        choices=list(TEMPLATES),
    )  # fmt: skip
    text_field: str | None = opt(None, "record field holding text (json/jsonl/hub sources)")
    instruction_field: str | None = opt(None, "record field holding the instruction")
    input_field: str | None = opt(None, "record field holding optional extra input")
    output_field: str | None = opt(None, "record field holding the response")

    def fields(self) -> FieldOptions:
        return FieldOptions(self.text_field, self.instruction_field, self.input_field, self.output_field)

    def source_spec(self) -> dict:
        """What identifies the samples (recorded in stores and compared on resume)."""
        return {
            "data": self.data, "samples": self.samples, "seq_len": self.seq_len, "seed": self.seed,
            "template": self.template, **{k: v for k, v in vars(self.fields()).items() if v},
        }  # fmt: skip

    def validate(self, max_len: int | None = None) -> None:
        for name in ("samples", "seq_len", "batch_size"):
            value = getattr(self, name)
            if value <= 0:
                raise SvdadaptError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if max_len is not None and self.seq_len > max_len:
            raise SvdadaptError(f"--seq-len {self.seq_len} is beyond this model's limit of {max_len} positions")

    def load_samples(self, tokenizer: PreTrainedTokenizerBase) -> list[Sample]:
        corpus = resolve(self.data, self.fields())
        return make_samples(corpus, tokenizer, self.samples, self.seq_len, self.seed, self.template)

    def load_batches(self, tokenizer: PreTrainedTokenizerBase) -> list[dict]:
        return make_batches(self.load_samples(tokenizer), self.batch_size, tokenizer.pad_token_id)
