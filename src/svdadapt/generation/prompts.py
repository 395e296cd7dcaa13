"""Prompts for ``svdadapt generate``: ``--prompt TEXT`` (repeated; ``-``: all of stdin as one),
``--prompts-file FILE`` (one prompt per line, or a .jsonl of ``{"prompt": ...}`` or ``{"messages": [...]}``
records; ``-``: the lines of stdin). A messages record is a conversation to continue: it ends with a
user turn."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..data.chat import Conversation, Message, RecordError, messages_of, to_continue
from ..errors import SvdadaptError

STDIN = "-"
NO_PROMPT = "give a prompt: --prompt TEXT (repeatable), --prompts-file FILE, or --prompts-file - to read stdin"


@dataclass(frozen=True)
class Prompt:
    """What the model continues: a text, or a conversation ending with a user turn."""

    conversation: Conversation
    text: str | None = None  # the prompt as given, when it was text

    @classmethod
    def of_text(cls, text: str) -> Prompt:
        return cls(Conversation((Message("user", text),)), text)

    def record(self) -> dict:
        """How the output file names it."""
        return {"prompt": self.text} if self.text is not None else {"messages": self.conversation.as_dicts()}

    def headline(self, width: int = 72) -> str:
        """The last user turn on one line, shortened."""
        line = " ".join(self.conversation.messages[-1].content.split())
        return line if len(line) <= width else line[: width - 1] + "…"


def _text(text: str, where: str) -> Prompt:
    if not text.strip():
        raise SvdadaptError(f"{where} is empty; give the text to continue")
    return Prompt.of_text(text)


def _record(line: str, where: str) -> Prompt:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SvdadaptError(f"{where} is not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict) or ("prompt" in record) == ("messages" in record):
        raise SvdadaptError(f"{where} must be an object with either 'prompt' (text) or 'messages' (a conversation)")
    if "prompt" in record:
        if not isinstance(record["prompt"], str):
            raise SvdadaptError(f"{where}: 'prompt' is not text")
        return _text(record["prompt"], f"the prompt of {where}")
    try:
        return Prompt(to_continue(messages_of(record)))
    except RecordError as exc:
        raise SvdadaptError(f"{where}: {exc}") from None


def _lines(text: str, name: str, jsonl: bool) -> list[Prompt]:
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            where = f"line {number} of {name}"
            prompts.append(_record(line, where) if jsonl else _text(line, where))
    if not prompts:
        raise SvdadaptError(f"{name} holds no prompt")
    return prompts


def _file(spec: str, stdin: TextIO) -> list[Prompt]:
    if spec == STDIN:
        return _lines(stdin.read(), "stdin", jsonl=False)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SvdadaptError(f"prompts file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SvdadaptError(f"prompts file {path} is not UTF-8 text") from None
    return _lines(text, f"prompts file {path}", jsonl=path.suffix == ".jsonl")


def read_prompts(given: list[str] | None, file: str | None, stdin: TextIO) -> list[Prompt]:
    """The prompts of ``--prompt`` (each; ``-``: stdin whole) and then of ``--prompts-file``."""
    prompts = [_text(stdin.read(), "stdin") if p == STDIN else _text(p, "--prompt") for p in given or []]
    if file is not None:
        prompts += _file(file, stdin)
    if not prompts:
        raise SvdadaptError(NO_PROMPT)
    return prompts
