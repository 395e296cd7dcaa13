"""Records → documents or (prompt, response) examples, by schema: one table row per known format.

The same row serves a hub dataset and a local json/jsonl file of that dataset's schema, so local
copies of the CorDA seed's files (MetaMathQA-395K.json, CodeFeedback .jsonl, ...) work as they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import SvdadaptError


@dataclass(frozen=True)
class Example:
    """One instruction example: the user's prompt and the expected response."""

    prompt: str
    response: str


def _alpaca(r: dict) -> Example:
    extra = (r.get("input") or "").strip()
    prompt = r["instruction"].strip() + (f"\n\n{extra}" if extra else "")
    return Example(prompt, str(r["output"]).strip())


def _conversation(r: dict) -> Example:
    turns = r.get("conversations") or r.get("conversation")
    if not isinstance(turns, list) or not turns:
        raise ValueError("empty conversation")
    first = turns[0]
    if "human" in first:  # CorDA seed's WizardLM file: [{"human": ..., "assistant": ...}]
        return Example(first["human"], first["assistant"])
    users = [t["value"] for t in turns if t.get("from") in ("human", "user")]
    bots = [t["value"] for t in turns if t.get("from") in ("gpt", "assistant")]
    if not users or not bots:
        raise ValueError("conversation without a human and an assistant turn")
    return Example(users[0], bots[0])


@dataclass(frozen=True)
class ExampleFormat:
    name: str
    fields: tuple[str, ...]  # all must be present in a record
    to_example: Callable[[dict], Example]


EXAMPLE_FORMATS = (
    ExampleFormat("alpaca", ("instruction", "output"), _alpaca),
    ExampleFormat("metamath", ("query", "response"), lambda r: Example(r["query"], r["response"])),
    ExampleFormat("codefeedback", ("query", "answer"), lambda r: Example(r["query"], r["answer"])),
    ExampleFormat("wizardlm", ("conversations",), _conversation),
    ExampleFormat("wizardlm-seed", ("conversation",), _conversation),
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


def examples_of(rows: Sequence[dict], fmt: ExampleFormat, where: str) -> list[Example]:
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
