"""Records → documents, (prompt, response) examples or whole conversations, by schema: one table row
per known format.

The same row serves a hub dataset and a local json/jsonl file of that dataset's schema, so local
copies of the CorDA seed's files (MetaMathQA-395K.json, CodeFeedback .jsonl, ...) work as they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import SvdadaptError
from .chat import Conversation, RecordError, from_messages, from_sharegpt


@dataclass(frozen=True)
class Example:
    """One instruction example: the user's prompt and the expected response."""

    prompt: str
    response: str


def _alpaca(r: dict) -> Example:
    extra = (r.get("input") or "").strip()
    prompt = r["instruction"].strip() + (f"\n\n{extra}" if extra else "")
    return Example(prompt, str(r["output"]).strip())


@dataclass(frozen=True)
class ExampleFormat:
    name: str
    fields: tuple[str, ...]  # all must be present in a record
    to_example: Callable[[dict], Example | Conversation]
    strict: bool = False  # a record not understood is refused (chat), not skipped with a note


EXAMPLE_FORMATS = (  # chat formats first: a record mixing them with another schema is refused, not read as that one
    ExampleFormat("messages", ("messages",), from_messages, strict=True),
    ExampleFormat("wizardlm", ("conversations",), from_sharegpt, strict=True),
    ExampleFormat("wizardlm-seed", ("conversation",), from_sharegpt, strict=True),
    ExampleFormat("alpaca", ("instruction", "output"), _alpaca),
    ExampleFormat("metamath", ("query", "response"), lambda r: Example(r["query"], r["response"])),
    ExampleFormat("codefeedback", ("query", "answer"), lambda r: Example(r["query"], r["answer"])),
)
TEXT_FIELDS = ("text", "question", "sentence", "content")


def read_records(path: Path) -> list[dict]:
    """Rows of a .json (a list, or {"data": [...]}) or .jsonl file."""
    if not path.is_file():
        raise SvdadaptError(f"data file {path} does not exist")
    if path.stat().st_size == 0:
        raise SvdadaptError(f"data file {path} is empty")
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            rows = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(rows, dict) and isinstance(rows.get("data"), list):
                rows = rows["data"]
    except json.JSONDecodeError as exc:
        raise SvdadaptError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise SvdadaptError(f"{path} is not UTF-8 text") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise SvdadaptError(f"{path} must hold a list of objects (one record per line for .jsonl)")
    if not rows:
        raise SvdadaptError(f"data file {path} has no records")
    return rows


def detect(rows: Sequence[dict], where: str) -> ExampleFormat | str:
    """The example format of the rows, or the name of their text field."""
    keys = set(rows[0])
    for fmt in EXAMPLE_FORMATS:
        if all(f in keys for f in fmt.fields):
            return fmt
    for field in TEXT_FIELDS:
        if field in keys:
            return field
    raise SvdadaptError(
        f"cannot tell what the records of {where} hold (fields: {', '.join(sorted(keys)[:8])}); name them "
        "with --text-field, or --instruction-field and --output-field"
    )


def texts_of(rows: Sequence[dict], field: str, where: str) -> list[str]:
    if hasattr(rows, "column_names"):  # a datasets.Dataset: read the column at once
        if field not in rows.column_names:
            raise SvdadaptError(f"{where} has no field {field!r} (it has {', '.join(rows.column_names)})")
        values = rows[field]
    else:
        missing = sum(1 for r in rows if field not in r)
        if missing:
            raise SvdadaptError(f"{missing} of {len(rows)} records of {where} have no field {field!r}")
        values = [r[field] for r in rows]
    texts = [str(v) for v in values if v is not None and str(v).strip()]
    if not texts:
        raise SvdadaptError(f"every {field!r} of {where} is empty")
    return texts


def _strict(r: dict, fmt: ExampleFormat, where: str, number: int) -> Example | Conversation:
    """A chat record read whole, or one line naming it: it holds another schema's fields too, or
    something :mod:`.chat` does not understand."""
    place = f"record {number} of {where}"
    if not isinstance(r, dict) or any(f not in r for f in fmt.fields):
        raise SvdadaptError(
            f"{place} has no {'/'.join(fmt.fields)} field, as the first record has; one schema per file"
        )
    mixed = next((o for o in EXAMPLE_FORMATS if o.fields != fmt.fields and all(f in r for f in o.fields)), None)
    if mixed is not None:
        also = "/".join(mixed.fields)
        raise SvdadaptError(f"{place} mixes schemas ({'/'.join(fmt.fields)} and {also}); keep one per record")
    try:
        return fmt.to_example(r)
    except RecordError as exc:
        raise SvdadaptError(f"{place}: {exc}") from None


def examples_of(
    rows: Sequence[dict], fmt: ExampleFormat, where: str, numbers: Sequence[int] | None = None
) -> list[Example | Conversation]:
    """The rows as examples (``numbers``: their 1-based numbers in the source, for messages)."""
    if fmt.strict:
        numbers = range(1, len(rows) + 1) if numbers is None else numbers
        return [_strict(r, fmt, where, number) for r, number in zip(rows, numbers)]
    out: list[Example] = []
    bad = 0
    for r in rows:
        try:
            out.append(fmt.to_example(r))
        except (KeyError, TypeError, ValueError, AttributeError):
            bad += 1
    if not out:
        raise SvdadaptError(
            f"no record of {where} has the {fmt.name} fields ({', '.join(fmt.fields)}); name the fields "
            "with --instruction-field and --output-field"
        )
    if bad:
        print(f"svdadapt: skipped {bad} of {len(rows)} records of {where} without {fmt.name} fields")
    return out


def field_format(instruction: str, output: str, input_field: str | None) -> ExampleFormat:
    """An example format from user-named fields."""

    def to_example(r: dict) -> Example:
        extra = str(r.get(input_field) or "").strip() if input_field else ""
        prompt = str(r[instruction]).strip() + (f"\n\n{extra}" if extra else "")
        return Example(prompt, str(r[output]).strip())

    fields = (instruction, output)
    return ExampleFormat(f"fields {instruction}/{output}", fields, to_example)
