"""``svdadapt generate``: continue prompts with a run (built or trained), a merged or any model, or an
exported PEFT adapter on its base; the tokens are streamed to stdout, and ``--out`` keeps
prompt/response records as jsonl."""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from .. import backend
from ..atomic import atomic_path, exclusive
from ..errors import SvdadaptError
from ..generation.prompts import read_prompts
from ..generation.settings import GenerationSettings
from ..generation.stream import Generation, generate_all
from ..generation.target import load_generator
from ..options import Options, group, opt
from .common import DEVICE_HELP, MODEL_HELP


@dataclass(kw_only=True)
class GenerateOptions(Options):
    """Generate text with a run (built or trained), a merged or any model, or an exported PEFT adapter
    (with --base): prompts from --prompt, --prompts-file or stdin, through the model's chat template
    when it has one; the tokens are streamed to stdout, greedy unless --do-sample."""

    target: str = opt(
        help=f"a run directory (from build or train), a PEFT adapter folder (from export; with --base), or a "
        f"model: {MODEL_HELP}",
        positional=True,
    )  # fmt: skip
    base: str | None = opt(None, "the model a PEFT adapter folder (TARGET) applies to, e.g. the original model")
    prompt: list[str] | None = opt(None, "a prompt (give it again for more; `-`: all of stdin as one)",
                                   repeat=True, metavar="TEXT")  # fmt: skip
    prompts_file: str | None = opt(
        None, "prompts, one a line, or a .jsonl of {\"prompt\": TEXT} or {\"messages\": [...]} records; `-`: stdin"
    )  # fmt: skip
    system: str | None = opt(None, "a system message before each prompt")
    no_chat_template: bool = opt(False, "feed text prompts as they are, not through the model's chat template")
    sampling: GenerationSettings = group(GenerationSettings)
    device: str | None = opt(None, DEVICE_HELP)
    out: str | None = opt(None, "also write the prompts and responses to this .jsonl file (replaced whole)")

    def check(self) -> None:
        if self.out is not None:
            check_out(Path(self.out).expanduser())
        if self.system is not None and not self.system.strip():
            raise SvdadaptError("--system is empty; leave it out or give the system message")


@dataclass
class GenerateResult:
    generations: list[Generation]
    out: Path | None
    seconds: float

    def summary(self) -> str:
        tokens = sum(g.new_tokens for g in self.generations)
        written = f"; written to {self.out}" if self.out else ""
        return f"{len(self.generations)} response(s), {tokens} new tokens in {self.seconds:.1f} s{written}"


def check_out(out: Path) -> None:
    """--out is a .jsonl file, new or an earlier generation's (never another file)."""
    if out.suffix != ".jsonl" or out.is_dir():
        raise SvdadaptError(f"--out {out}: name a .jsonl file")
    if not out.exists():
        return
    try:
        ours = all("response" in json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line)
    except (OSError, ValueError, TypeError):
        ours = False
    if not ours:
        raise SvdadaptError(f"--out {out} exists and is not an earlier generation's records; name another file")


def _write(out: Path, generations: list[Generation]) -> None:
    records = [{**g.prompt.record(), "response": g.response} for g in generations]
    with atomic_path(out) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def generate(opts: GenerateOptions, progress: bool = True) -> GenerateResult:
    """Generate as the CLI does (``progress``: stream the tokens to stdout); the responses, and the
    file they were written to."""
    started = time.monotonic()
    prompts = read_prompts(opts.prompt, opts.prompts_file, sys.stdin)  # bad prompts fail before any model loads
    out = Path(opts.out).expanduser() if opts.out else None
    with exclusive(out) if out is not None else nullcontext():
        generator = load_generator(opts.target, opts.base, backend.resolve_device(opts.device))
        generations = generate_all(
            generator.model, generator.tokenizer, prompts, opts.sampling, chat=not opts.no_chat_template,
            system=opts.system, stream=progress,
        )  # fmt: skip
        if out is not None:
            _write(out, generations)
    return GenerateResult(generations, out, time.monotonic() - started)
