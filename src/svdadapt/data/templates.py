"""Prompt templates for instruction examples: rows of a table, each mapping an example to text.

``chat`` uses the tokenizer's own chat template, ``llama2`` the format the CorDA paper used,
``plain`` an Alpaca-style layout for models without a chat template. Each gives the prompt part
and the response part separately, so training can put the loss on response tokens only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..errors import SvdadaptError, unknown
from .records import Example

LLAMA2_SYSTEM = (
    '"Below is an instruction that describes a task. Write a response that appropriately completes the request."'
)


def _chat(example: Example, tok: PreTrainedTokenizerBase) -> tuple[str, str]:
    if not tok.chat_template:
        raise SvdadaptError("this tokenizer has no chat template; use --template llama2 or --template plain")
    user = [{"role": "user", "content": example.prompt}]
    prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(user + [{"role": "assistant", "content": example.response}], tokenize=False)
    if not full.startswith(prompt):
        raise SvdadaptError("the chat template does not extend the prompt with the answer; use --template plain")
    return prompt, full[len(prompt) :]


def _llama2(example: Example, tok: PreTrainedTokenizerBase) -> tuple[str, str]:
    bos, eos = tok.bos_token or "", tok.eos_token or ""
    prompt = f"{bos}[INST] <<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\n{example.prompt} [/INST] "
    return prompt, f"{example.response} {eos}"


def _plain(example: Example, tok: PreTrainedTokenizerBase) -> tuple[str, str]:
    prompt = f"### Instruction:\n{example.prompt}\n\n### Response:\n"
    return prompt, f"{example.response}{tok.eos_token or ''}"


@dataclass(frozen=True)
class Template:
    name: str
    render: Callable[[Example, PreTrainedTokenizerBase], tuple[str, str]]


TEMPLATES = {t.name: t for t in (Template("chat", _chat), Template("llama2", _llama2), Template("plain", _plain))}


def get_template(name: str | None, tokenizer: PreTrainedTokenizerBase) -> Template:
    """The named template; ``None`` picks ``chat`` when the tokenizer has one, else ``plain``."""
    if name is None:
        name = "chat" if tokenizer.chat_template else "plain"
    if name not in TEMPLATES:
        raise unknown("template", name, TEMPLATES)
    return TEMPLATES[name]
