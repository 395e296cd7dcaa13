"""The data options of every command that reads a calibration source (``--data`` and friends)."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..options import POSITIVE, Options, check_positions, opt
from .batching import make_batches
from .samples import Sample, make_samples
from .sources import FieldOptions, check_spec, resolve
from .templates import TEMPLATES

SOURCE_HELP = (
    "source: wiki, wiki-heldout, news, news-heldout, polarity, news-cloze, nqopen, triviaqa, wikitext2, ptb, metamath, "
    "codefeedback, wizardlm, alpaca; NAME:FILE for a local copy of NAME; a .txt/.json/.jsonl file; or hf:REPO[:CONFIG]"
)


@dataclass(kw_only=True)
class DataOptions(Options):
    """Where calibration samples come from and how many (the sampling seed is the command's ``--seed``)."""

    data: str = opt(help=SOURCE_HELP)
    samples: int = opt(256, "number of calibration samples", check=POSITIVE)
    seq_len: int = opt(2048, "tokens per text window; longer examples are cut", check=POSITIVE)
    batch_size: int = opt(8, "samples per forward pass", check=POSITIVE)
    template: str | None = opt(
        None, "prompt template for instruction examples (default: chat if the tokenizer has one, else plain)",
        choices=list(TEMPLATES),
    )  # fmt: skip
    text_field: str | None = opt(None, "record field holding text (json/jsonl/hub sources)")
    instruction_field: str | None = opt(None, "record field holding the instruction")
    input_field: str | None = opt(None, "record field holding optional extra input")
    output_field: str | None = opt(None, "record field holding the response")

    def check(self) -> None:
        if self.data is not None:
            check_spec(self.data)  # an unknown name or a missing file, before any model loads

    def fields(self) -> FieldOptions:
        return FieldOptions(self.text_field, self.instruction_field, self.input_field, self.output_field)

    def source_spec(self, seed: int) -> dict:
        """What identifies the samples (recorded in stores and compared on resume)."""
        return {
            "data": self.data, "samples": self.samples, "seq_len": self.seq_len, "seed": seed,
            "template": self.template, **{k: v for k, v in vars(self.fields()).items() if v},
        }  # fmt: skip

    def check_length(self, max_len: int | None, flag: str = "--seq-len") -> None:
        """Refuse windows longer than the model's positions (known once it is loaded)."""
        check_positions(flag, self.seq_len, max_len)

    def load_samples(self, tokenizer: PreTrainedTokenizerBase, seed: int) -> list[Sample]:
        corpus = resolve(self.data, self.fields())
        return make_samples(corpus, tokenizer, self.samples, self.seq_len, seed, self.template)

    def load_batches(self, tokenizer: PreTrainedTokenizerBase, seed: int) -> list[dict]:
        return make_batches(self.load_samples(tokenizer, seed), self.batch_size, tokenizer.pad_token_id)
