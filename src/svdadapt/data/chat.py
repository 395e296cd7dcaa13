"""Chat records, kept whole: TRL/OpenAI ``messages`` (``[{"role": ..., "content": ...}]``) and
ShareGPT ``conversations`` (``[{"from": "human"|"gpt"|"system", "value": ...}]``, or the CorDA seed's
``[{"human": ..., "assistant": ...}]`` pairs).

A conversation is an optional system message, then user and assistant turns, starting with a user
turn and holding at least one assistant turn; training labels every assistant turn (TRL's
assistant-only convention). A record that says anything else — an unknown role, empty or non-text
content, a system message after the start — is refused (:class:`RecordError`, which the reader turns
into one line naming the record), never cut.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class RecordError(ValueError):
    """What is wrong with one record (the reader names the record)."""


@dataclass(frozen=True)
class Message:
    role: str  # system, user or assistant
    content: str


@dataclass(frozen=True)
class Conversation:
    """A whole conversation: an optional system message, then user and assistant turns."""

    messages: tuple[Message, ...]

    @property
    def system(self) -> str | None:
        return self.messages[0].content if self.messages[0].role == "system" else None

    def as_dicts(self) -> list[dict[str, str]]:
        """The messages as chat templates take them."""
        return [{"role": m.role, "content": m.content} for m in self.messages]

    def exchanges(self) -> list[tuple[str, str | None]]:
        """(user text, assistant text) per exchange, consecutive turns of one role joined by a blank
        line; the last assistant text is None when the conversation ends with a user turn."""
        pairs: list[list[str | None]] = []
        for m in self.messages:
            if m.role == "user" and (not pairs or pairs[-1][1] is not None):
                pairs.append([m.content, None])
            elif m.role == "user":
                pairs[-1][0] = f"{pairs[-1][0]}\n\n{m.content}"
            elif m.role == "assistant":
                pairs[-1][1] = m.content if pairs[-1][1] is None else f"{pairs[-1][1]}\n\n{m.content}"
        return [(user, assistant) for user, assistant in pairs]


def _check_turns(messages: list[Message]) -> None:
    """Roles known, content non-empty text, a system message only first, a user turn first after it."""
    if not messages:
        raise RecordError("the conversation is empty")
    for number, m in enumerate(messages, 1):
        if m.role not in ROLES:
            raise RecordError(f"message {number} has role {m.role!r}; the roles are {', '.join(ROLES)}")
        if not isinstance(m.content, str):
            raise RecordError(f"message {number} ({m.role}) has content that is not text")
        if not m.content.strip():
            raise RecordError(f"message {number} ({m.role}) is empty")
        if m.role == "system" and number > 1:
            raise RecordError(f"message {number} is a system message after the start of the conversation")
    turns = [m for m in messages if m.role != "system"]
    if not turns or turns[0].role != "user":
        raise RecordError("the conversation does not start with a user turn (after any system message)")


def checked(messages: list[Message]) -> Conversation:
    """The messages as a conversation to learn from, or :class:`RecordError` saying what is not understood."""
    _check_turns(messages)
    if not any(m.role == "assistant" for m in messages):
        raise RecordError("the conversation has no assistant turn to learn from")
    return Conversation(tuple(messages))


def to_continue(messages: list[Message]) -> Conversation:
    """The messages as a conversation for a model to continue: it ends with a user turn."""
    _check_turns(messages)
    if messages[-1].role != "user":
        raise RecordError("the conversation ends with an assistant turn; a model continues after a user turn")
    return Conversation(tuple(messages))


def _items(r: dict, field: str) -> list:
    items = r.get(field)
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise RecordError(f"{field!r} is not a list of objects")
    return items


def messages_of(r: dict) -> list[Message]:
    """The messages of a ``messages`` record (TRL/OpenAI), unchecked."""
    messages = []
    for number, item in enumerate(_items(r, "messages"), 1):
        if "role" not in item or "content" not in item:
            raise RecordError(f"message {number} has no 'role' and 'content'")
        messages.append(Message(str(item["role"]), item["content"]))
    return messages


def from_messages(r: dict) -> Conversation:
    """A ``messages`` record (TRL/OpenAI) to learn from."""
    return checked(messages_of(r))


def from_sharegpt(r: dict) -> Conversation:
    """A ShareGPT ``conversations`` record (or the CorDA seed's ``conversation`` of human/assistant pairs)."""
    field = "conversations" if "conversations" in r else "conversation"
    messages = []
    for number, item in enumerate(_items(r, field), 1):
        if "from" in item and "value" in item:
            role = SHAREGPT_ROLES.get(item["from"])
            if role is None:
                known = ", ".join(SHAREGPT_ROLES)
                raise RecordError(f"turn {number} is from {item['from']!r}; ShareGPT turns are from {known}")
            messages.append(Message(role, item["value"]))
        elif "human" in item and "assistant" in item and len(item) == 2:  # the seed's WizardLM pairs
            messages += [Message("user", item["human"]), Message("assistant", item["assistant"])]
        else:
            raise RecordError(f"turn {number} has neither 'from' and 'value' nor 'human' and 'assistant'")
    return checked(messages)
