"""The calibration and training sources, as one table, and turning a ``--data`` spec into a corpus.

A spec is one of:

- a name from :data:`SOURCES` (``wiki``, ``nqopen``, ``metamath``, ...);
- ``NAME:FILE`` — that source's schema read from a local json/jsonl copy (e.g. the CorDA seed's
  ``metamath:data/MetaMathQA-395K.json``), which needs no network;
- a path to a ``.txt`` (concatenated text) or ``.json``/``.jsonl`` file (fields detected, or named
  with ``--text-field`` / ``--instruction-field`` ``--output-field`` [``--input-field``]);
- ``hf:REPO[:CONFIG]`` — any hub dataset, fields detected or named as above.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import SvdadaptError, unknown
from ..hub import require_hub
from .chat import Conversation
from .records import (
    EXAMPLE_FORMATS,
    Example,
    ExampleFormat,
    detect,
    examples_of,
    field_format,
    read_records,
    texts_of,
)

POLARITY_PROMPT = "Is the sentiment of this movie review positive or negative?\n\nReview: {review}"


@dataclass(frozen=True)
class FieldOptions:
    """User-named record fields (override detection)."""

    text_field: str | None = None
    instruction_field: str | None = None
    input_field: str | None = None
    output_field: str | None = None


@dataclass
class Corpus:
    """A resolved source: either documents (text) or instruction examples."""

    where: str
    documents: list[str] | None = None
    rows: Sequence[dict] | None = None
    example_format: ExampleFormat | None = None

    @property
    def kind(self) -> str:
        return "text" if self.documents is not None else "examples"

    def __len__(self) -> int:
        return len(self.documents if self.documents is not None else self.rows)

    def examples(self, indices: Sequence[int]) -> list[Example | Conversation]:
        """The examples at ``indices`` (a chat record is a whole :class:`Conversation`)."""
        rows = [self.rows[i] for i in indices]
        return examples_of(rows, self.example_format, self.where, [i + 1 for i in indices])


@dataclass(frozen=True)
class Source:
    """One row of the source table."""

    name: str
    description: str
    schema: str  # an example format name or a text field
    hub: tuple[str, str | None, str] | None = None  # (repo, config, split)
    bundled: Callable[[], Corpus] | None = None


def _bundled_text(name: str, get: Callable[[], list[str]]) -> Callable[[], Corpus]:
    """A bundled text as its documents (articles, news stories), which joined by blank lines are
    the text itself."""
    return lambda: Corpus(where=f"bundled {name}", documents=get())


def _polarity(heldout: bool) -> Callable[[], Corpus]:
    def get() -> Corpus:
        from ..assets import polarity_split

        rows = [{"instruction": POLARITY_PROMPT.format(review=s), "output": y} for s, y in polarity_split(heldout)]
        where = "bundled polarity" + (" (held-out part)" if heldout else "")
        return Corpus(where=where, rows=rows, example_format=_format("alpaca"))

    return get


def _news_cloze(heldout: bool) -> Callable[[], Corpus]:
    def get() -> Corpus:
        from .cloze import news_cloze_rows

        where = "bundled news-cloze" + (" (held-out part)" if heldout else "")
        return Corpus(where=where, rows=news_cloze_rows(heldout), example_format=_format("alpaca"))

    return get


def _wiki(heldout: bool) -> Callable[[], list[str]]:
    def get() -> list[str]:
        from ..assets import wiki_articles

        return [a.text for a in wiki_articles() if a.heldout == heldout]

    return get


def _news() -> list[str]:
    from ..assets import news_text

    return news_text().split("\n\n")


def _news_heldout() -> list[str]:
    from .cloze import news_documents

    return news_documents(heldout=True)


_HUB_ROWS = (
    # name, description, schema, (hub repo, config, split)
    ("nqopen", "NQ-open questions (CorDA KPA)", "question", ("google-research-datasets/nq_open", None, "train")),
    ("triviaqa", "TriviaQA questions (CorDA KPA)", "question", ("mandarjoshi/trivia_qa", "rc", "train")),
    ("wikitext2", "WikiText-2 raw", "text", ("Salesforce/wikitext", "wikitext-2-raw-v1", "train")),
    ("ptb", "Penn Treebank sentences", "sentence", ("ptb-text-only/ptb_text_only", "penn_treebank", "train")),
    ("metamath", "MetaMathQA (CorDA IPA)", "metamath", ("meta-math/MetaMathQA", None, "train")),
    ("codefeedback", "CodeFeedback", "codefeedback", ("m-a-p/CodeFeedback-Filtered-Instruction", None, "train")),
    ("wizardlm", "WizardLM evol-instruct", "wizardlm", ("WizardLMTeam/WizardLM_evol_instruct_V2_196k", None, "train")),
    ("alpaca", "Stanford Alpaca", "alpaca", ("tatsu-lab/alpaca", None, "train")),
)
_BUNDLED_ROWS = (
    ("wiki", "bundled English Wikipedia, calibration part", "text", _bundled_text("wiki", _wiki(False))),
    ("wiki-heldout", "bundled English Wikipedia, held-out part", "text", _bundled_text("wiki-heldout", _wiki(True))),
    ("news", "bundled Lee news background text", "text", _bundled_text("news", _news)),
    (
        "news-heldout",
        "bundled news stories news-cloze never trains on",
        "text",
        _bundled_text("news-heldout", _news_heldout),
    ),
    ("polarity", "bundled movie-review sentiment, 160-example training part", "alpaca", _polarity(False)),
    ("polarity-heldout", "bundled movie-review sentiment, 40-example held-out part", "alpaca", _polarity(True)),
    ("news-cloze", "fill-in-the-blank prompts from the bundled news text, training part", "alpaca", _news_cloze(False)),
    ("news-cloze-heldout", "fill-in-the-blank prompts from held-out news stories", "alpaca", _news_cloze(True)),
)
SOURCES: dict[str, Source] = {
    **{name: Source(name, desc, schema, hub=hub) for name, desc, schema, hub in _HUB_ROWS},
    **{name: Source(name, desc, schema, bundled=get) for name, desc, schema, get in _BUNDLED_ROWS},
}

# Evaluation splits of the text sources (perplexity), where they differ from the training split.
EVAL_SPLITS = {"wikitext2": "test", "ptb": "validation"}


def _format(name: str) -> ExampleFormat:
    return next(f for f in EXAMPLE_FORMATS if f.name == name)


def _chat_layout(rows: Sequence[dict], fmt: ExampleFormat) -> ExampleFormat:
    """A named source's chat format, or the chat layout its local copy's first record has (the CorDA
    seed's WizardLM file holds ``conversation`` pairs where the hub has ``conversations``)."""
    first = rows[0] if len(rows) else {}
    if not fmt.strict or all(f in first for f in fmt.fields):
        return fmt
    return next((f for f in EXAMPLE_FORMATS if f.strict and all(k in first for k in f.fields)), fmt)


def _corpus_from_rows(rows: Sequence[dict], where: str, schema: str | None, fields: FieldOptions) -> Corpus:
    if fields.text_field:
        return Corpus(where, documents=texts_of(rows, fields.text_field, where))
    if fields.instruction_field or fields.output_field:
        if not (fields.instruction_field and fields.output_field):
            raise SvdadaptError("--instruction-field and --output-field go together; give both")
        fmt = field_format(fields.instruction_field, fields.output_field, fields.input_field)
        return Corpus(where, rows=rows, example_format=fmt)
    found = detect(rows, where) if schema is None else schema
    if isinstance(found, ExampleFormat):
        return Corpus(where, rows=rows, example_format=found)
    if any(f.name == found for f in EXAMPLE_FORMATS):
        return Corpus(where, rows=rows, example_format=_chat_layout(rows, _format(found)))
    return Corpus(where, documents=texts_of(rows, found, where))


def _local(path: Path, schema: str | None, fields: FieldOptions) -> Corpus:
    if not path.exists():
        raise SvdadaptError(f"data file {path} does not exist")
    if path.suffix == ".txt":
        if path.stat().st_size == 0:
            raise SvdadaptError(f"data file {path} is empty")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise SvdadaptError(f"data file {path} is not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
        if not text.strip():
            raise SvdadaptError(f"data file {path} holds only whitespace")
        return Corpus(str(path), documents=[text])
    if path.suffix in (".json", ".jsonl"):
        return _corpus_from_rows(read_records(path), str(path), schema, fields)
    raise SvdadaptError(f"cannot read {path}: use a .txt, .json or .jsonl file")


def _hub(repo: str, config: str | None, split: str, what: str, schema: str | None, fields: FieldOptions) -> Corpus:
    require_hub(what, f"download it elsewhere and pass a local copy, e.g. --data {what}:FILE.jsonl")
    import datasets

    try:
        rows = datasets.load_dataset(repo, config, split=split)
    except Exception as exc:  # datasets raises many types for "not reachable / not found"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SvdadaptError(
            f"could not load {what} from the hub ({first}); pass a local copy, e.g. --data {what}:FILE.jsonl"
        ) from None
    if len(rows) == 0:
        raise SvdadaptError(f"{what} on the hub has no rows in split {split}")
    return _corpus_from_rows(rows, what, schema, fields)


@dataclass(frozen=True)
class _Form:
    """What a ``--data`` spec names (see the module docstring), before anything is read."""

    kind: str  # "hub", "source" (a table row), "file" (a local file, with the schema of ``name`` if any)
    name: str = ""  # hub repo, or the table row
    config: str | None = None  # hub config
    path: Path | None = None


def _form(spec: str) -> _Form:
    spec = spec.strip()
    if not spec:
        raise SvdadaptError("--data is empty; name a source or a file")
    if spec.startswith("hf:"):
        repo, _, config = spec[3:].partition(":")
        return _Form("hub", repo, config or None)
    name, sep, file = spec.partition(":")
    if sep and name in SOURCES and file:
        return _Form("file", name, path=Path(file).expanduser())
    if spec in SOURCES:
        return _Form("source", spec)
    path = Path(spec).expanduser()
    if path.suffix in (".txt", ".json", ".jsonl") or path.exists():
        return _Form("file", path=path)
    raise unknown("data source", spec, SOURCES, "NAME:FILE, a .txt/.json/.jsonl file, or hf:REPO[:CONFIG]")


def check_spec(spec: str) -> None:
    """A one-line error for a ``--data`` spec that cannot resolve, found without reading anything: an
    unknown name, or a local file that is not there (so a recipe fails before its first stage)."""
    form = _form(spec)
    if form.kind == "file" and not form.path.exists():
        raise SvdadaptError(f"data file {form.path} does not exist")


def resolve(spec: str, fields: FieldOptions = FieldOptions(), split: str | None = None) -> Corpus:
    """Turn a ``--data`` spec into a corpus (see the module docstring for the forms)."""
    form = _form(spec)
    if form.kind == "hub":
        return _hub(form.name, form.config, split or "train", form.name, None, fields)
    if form.kind == "file":
        return _local(form.path, SOURCES[form.name].schema if form.name else None, fields)
    source = SOURCES[form.name]
    if source.bundled is not None:
        return source.bundled()
    repo, config, default_split = source.hub
    return _hub(repo, config, split or default_split, form.name, source.schema, fields)
