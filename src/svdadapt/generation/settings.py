"""How tokens are chosen: greedy by default, or sampled (``--do-sample``) with the usual knobs."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SvdadaptError
from ..options import POSITIVE, SEED, Check, Options, opt

SAMPLING_ONLY = ("temperature", "top_p", "top_k")


@dataclass(kw_only=True)
class GenerationSettings(Options):
    """Greedy decoding, or sampling with --do-sample; at most --max-new-tokens per prompt."""

    max_new_tokens: int = opt(256, "new tokens per prompt at most", check=POSITIVE)
    do_sample: bool = opt(False, "sample the next token (default: greedy, always the likeliest)")
    temperature: float | None = opt(None, "sampling: divide the logits by this (default: 1)", check=POSITIVE)
    top_p: float | None = opt(
        None, "sampling: keep the likeliest tokens up to this probability mass (nucleus)",
        check=Check(lambda v: 0 < v <= 1, "must be in (0, 1]"),
    )  # fmt: skip
    top_k: int | None = opt(None, "sampling: keep the k likeliest tokens", check=POSITIVE)
    repetition_penalty: float | None = opt(None, "divide the scores of tokens already present by this", check=POSITIVE)
    seed: int = opt(0, "seed of the sampling", check=SEED)

    def check(self) -> None:
        given = [f"--{name.replace('_', '-')}" for name in SAMPLING_ONLY if getattr(self, name) is not None]
        if given and not self.do_sample:
            verb = "apply" if len(given) > 1 else "applies"
            raise SvdadaptError(
                f"{', '.join(given)} {verb} to sampling; add --do-sample (without it decoding is greedy)"
            )

    def generation_kwargs(self) -> dict:
        """transformers' ``generate`` arguments: every choice explicit, so the model's own
        generation_config (which may sample) does not decide."""
        sampled = {"temperature": self.temperature or 1.0, "top_p": self.top_p or 1.0, "top_k": self.top_k or 0}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty or 1.0,
            **(sampled if self.do_sample else {"temperature": None, "top_p": None, "top_k": None}),
        }
