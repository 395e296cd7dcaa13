"""Prompts → responses: each prompt rendered through the model's chat template (or fed as text),
the new tokens streamed as they come (transformers' ``TextStreamer``), greedy or sampled."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import torch
from jinja2 import TemplateError
from torch import nn
from transformers import PreTrainedTokenizerBase, TextStreamer

from ..data.chat import Conversation, Message
from ..data.templates import TEMPLATES
from ..errors import SvdadaptError
from ..models import max_positions
from .prompts import Prompt
from .settings import GenerationSettings


@dataclass
class Generation:
    prompt: Prompt
    response: str
    new_tokens: int


def with_system(conversation: Conversation, system: str | None) -> Conversation:
    """``system`` first, unless the conversation has a system message of its own."""
    if system is None or conversation.system is not None:
        return conversation
    return replace(conversation, messages=(Message("system", system), *conversation.messages))


def prompt_ids(prompt: Prompt, tokenizer: PreTrainedTokenizerBase, chat: bool, system: str | None) -> list[int]:
    """The prompt's tokens: through the chat template with the generation prompt (``chat`` and the
    tokenizer has one); else a text prompt as it is (``system`` and a blank line first), a
    conversation in the plain layout training uses for models without a chat template."""
    conversation = with_system(prompt.conversation, system)
    if chat and tokenizer.chat_template:
        try:
            text = tokenizer.apply_chat_template(conversation.as_dicts(), tokenize=False, add_generation_prompt=True)
        except TemplateError as exc:  # e.g. a template that takes no system message
            raise SvdadaptError(f"the chat template refuses the prompt {prompt.headline()!r} ({exc})") from None
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if prompt.text is not None:
        return tokenizer((f"{system}\n\n" if system else "") + prompt.text)["input_ids"]
    text = "".join(part for part, _ in TEMPLATES["plain"].turns(conversation, tokenizer))
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _room(ids: list[int], wanted: int, limit: int | None, number: int) -> int:
    """New tokens to ask for: ``wanted``, or what the model's positions leave after the prompt."""
    if limit is None:
        return wanted
    if len(ids) >= limit:
        raise SvdadaptError(
            f"prompt {number} is {len(ids)} tokens long, and the model takes {limit} positions in all; shorten it"
        )
    if len(ids) + wanted > limit:
        print(f"svdadapt: note: prompt {number} leaves room for {limit - len(ids)} new tokens", file=sys.stderr)
    return min(wanted, limit - len(ids))


@torch.no_grad()
def generate_all(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Prompt],
    settings: GenerationSettings,
    chat: bool = True,
    system: str | None = None,
    stream: bool = True,
) -> list[Generation]:
    """A response to each prompt, each sampled from ``settings.seed`` (the same prompt gives the same
    response wherever it stands); ``stream``: the new tokens printed to stdout as they come."""
    device = next(model.parameters()).device
    limit = max_positions(model)
    kwargs = settings.generation_kwargs()
    generations = []
    for number, prompt in enumerate(prompts, 1):
        ids = prompt_ids(prompt, tokenizer, chat, system)
        new = _room(ids, settings.max_new_tokens, limit, number)
        if stream and len(prompts) > 1:  # which prompt each stream answers, a blank line between them
            print(("\n" if number > 1 else "") + f"[{number}/{len(prompts)}] {prompt.headline()}", flush=True)
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
        inputs = torch.tensor([ids], device=device)  # (1, prompt)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(settings.seed)
            output = model.generate(
                input_ids=inputs, attention_mask=torch.ones_like(inputs), pad_token_id=tokenizer.pad_token_id,
                streamer=streamer, **{**kwargs, "max_new_tokens": new},
            )  # fmt: skip
        fresh = output[0, len(ids) :]  # (new,)
        generations.append(Generation(prompt, tokenizer.decode(fresh, skip_special_tokens=True), len(fresh)))
    return generations
