"""Prompt templates for instruction examples and conversations: rows of a table, each mapping an
example to text.

``chat`` uses the tokenizer's own chat template, ``llama2`` the format the CorDA paper used,
``plain`` an Alpaca-style layout for models without a chat template. Each gives the prompt part
and the response part separately, so training can put the loss on response tokens only; a whole
conversation becomes segments of text, each an assistant turn (labelled) or what leads to one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..errors import SvdadaptError, unknown
from .chat import Conversation
from .records import Example

Segments = list[tuple[str, bool]]  # (text, is it an assistant turn) in order: their concatenation is the text

LLAMA2_SYSTEM = (
    '"Below is an instruction that describes a task. Write a response that appropriately completes the request."'
)


def _require_chat_template(tok: PreTrainedTokenizerBase) -> None:
    if not tok.chat_template:
        raise SvdadaptError("this tokenizer has no chat template; use --template llama2 or --template plain")


def _chat(example: Example, tok: PreTrainedTokenizerBase) -> tuple[str, str]:
    _require_chat_template(tok)
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


def _chat_turns(conversation: Conversation, tok: PreTrainedTokenizerBase) -> Segments:
    """The chat template rendered turn by turn: before each assistant turn the conversation so far
    with the generation prompt, then with that turn; each rendering must extend the one before."""
    _require_chat_template(tok)
    messages = conversation.as_dicts()
    ends = [i + 1 for i, m in enumerate(messages) if m["role"] == "assistant"]
    segments, done = [], ""
    for end in ends:
        prompt = tok.apply_chat_template(messages[: end - 1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(messages[:end], tokenize=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise SvdadaptError(
                "the chat template does not render a conversation turn by turn (a turn changes once later ones "
                "follow); use --template plain or --template llama2"
            )
        segments += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    if ends[-1] < len(messages):  # a last user turn, with nothing to learn
        rest = tok.apply_chat_template(messages, tokenize=False)
        segments.append((rest[len(done) :] if rest.startswith(done) else "", False))
    return segments


def _llama2_turns(conversation: Conversation, tok: PreTrainedTokenizerBase) -> Segments:
    """Llama-2's multi-turn layout; the conversation's system message replaces the paper's."""
    bos, eos = tok.bos_token or "", tok.eos_token or ""
    segments = []
    for index, (user, assistant) in enumerate(conversation.exchanges()):
        system = f"<<SYS>>\n{conversation.system or LLAMA2_SYSTEM}\n<</SYS>>\n\n" if index == 0 else ""
        segments.append((f"{bos}[INST] {system}{user} [/INST] ", False))
        if assistant is not None:
            segments.append((f"{assistant} {eos}", True))
    return segments


def _plain_turns(conversation: Conversation, tok: PreTrainedTokenizerBase) -> Segments:
    """The Alpaca-style layout per exchange, a blank line between exchanges, any system message first."""
    segments = []
    for index, (user, assistant) in enumerate(conversation.exchanges()):
        lead = "\n\n" if index else (f"{conversation.system}\n\n" if conversation.system else "")
        segments.append((f"{lead}### Instruction:\n{user}\n\n### Response:\n", False))
        if assistant is not None:
            segments.append((f"{assistant}{tok.eos_token or ''}", True))
    return segments


@dataclass(frozen=True)
class Template:
    name: str
    render: Callable[[Example, PreTrainedTokenizerBase], tuple[str, str]]
    turns: Callable[[Conversation, PreTrainedTokenizerBase], Segments]

    def segments(self, item: Example | Conversation, tok: PreTrainedTokenizerBase) -> Segments:
        """An example as its prompt and response, or a whole conversation turn by turn."""
        if isinstance(item, Conversation):
            return [(text, labelled) for text, labelled in self.turns(item, tok) if text]
        prompt, response = self.render(item, tok)
        return [(prompt, False), (response, True)]


TEMPLATES = {
    t.name: t
    for t in (
        Template("chat", _chat, _chat_turns),
        Template("llama2", _llama2, _llama2_turns),
        Template("plain", _plain, _plain_turns),
    )
}


def get_template(name: str | None, tokenizer: PreTrainedTokenizerBase) -> Template:
    """The named template; ``None`` picks ``chat`` when the tokenizer has one, else ``plain``."""
    if name is None:
        name = "chat" if tokenizer.chat_template else "plain"
    if name not in TEMPLATES:
        raise unknown("template", name, TEMPLATES)
    return TEMPLATES[name]
