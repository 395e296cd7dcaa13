"""``svdadapt eval``: evaluate a run (its base with the adapters and any trained head) or a model,
write the results as JSON (``RUN/eval/results.json`` or ``--out``) and print a one-screen table."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .. import backend
from ..atomic import exclusive, write_json
from ..data.sources import check_spec
from ..errors import SvdadaptError
from ..evaluate.report import results_table
from ..evaluate.settings import EvalSettings
from ..evaluate.suite import TASK_HELP, evaluate_model, is_causal_lm, precheck, split_list, task_kind
from ..models import LoadedModel, load_model
from ..options import Options, group, opt
from ..peft_handle import adapter_option, chosen_adapter
from ..runs import RUN_FILE, Run
from .common import DEVICE_HELP

DEFAULT_SOURCES = ["wiki-heldout"]
FORMAT = "svdadapt.eval"


@dataclass(kw_only=True)
class EvalOptions(Options):
    """Evaluate a run or a model: perplexity on text in non-overlapping windows, GLUE metrics, accuracy
    on the held-out polarity task by label likelihood, and lm-evaluation-harness tasks (needs
    `pip install svdadapt[eval]`). Results go to RUN/eval/results.json (or --out) and a table.

    Without --perplexity and --tasks: perplexity on wiki-heldout for a causal LM, the trained task
    for a classification run."""

    target: str = opt(
        help="run directory (from build or train), or a model: local directory (e.g. a merged run), hub id, "
        "`default` or `default-encoder`",
        positional=True,
    )  # fmt: skip
    perplexity: str | None = opt(
        None, "text sources for perplexity, comma-separated: wiki-heldout, news, wikitext2 (test split), ptb "
        "(validation split), FILE.txt, ..."
    )  # fmt: skip
    tasks: str | None = opt(None, f"tasks, comma-separated: {TASK_HELP}")
    settings: EvalSettings = group(EvalSettings)
    initial: bool = opt(
        False,
        "a run: evaluate its adapter as built (before training), not its current one (into RUN/eval/initial.json)",
    )
    adapter: str | None = adapter_option()
    device: str | None = opt(None, DEVICE_HELP)
    out: str | None = opt(None, "results JSON file (default: RUN/eval/results.json for a run; none for a model)")

    def check(self) -> None:
        if self.adapter and self.initial:
            raise SvdadaptError("--initial evaluates the adapter as built; --adapter one trained elsewhere: give one")
        for spec in split_list(self.tasks):  # names, before any model loads (a recipe: before its first stage)
            task_kind(spec)
        for spec in split_list(self.perplexity):
            check_spec(spec)


@dataclass
class EvalResult:
    results: dict
    out: Path | None

    def summary(self) -> str:
        written = f"results: {self.out}" if self.out else "results: not written (pass --out FILE.json to keep them)"
        return f"{results_table(self.results)}\n{written}"


def load_target(
    target: str, device: str, initial: bool = False, adapter: str | None = None
) -> tuple[LoadedModel, dict]:
    """The model to evaluate and what it is: a run (base + adapters + trained head; ``adapter``: a
    PEFT adapter trained elsewhere in place of its own) or a model."""
    path = Path(target).expanduser()
    if (path / RUN_FILE).is_file():
        run = Run.open(path)
        adapters, head = (None, None) if initial else chosen_adapter(run, adapter, "evaluating it")
        loaded = run.load_adapted(device=device, initial=initial, adapters=adapters, head=head)
        training = run.meta.get("training") or {}
        stage = "built" if initial else run.meta.get("stage")
        about = {"kind": "run", "path": path.resolve().name, "method": run.meta["method"], "stage": stage}
        return loaded, {**about, "trained_task": training.get("task")}
    if path.is_dir() and not (path / "config.json").is_file():
        raise SvdadaptError(f"{path} is neither an svdadapt run (no {RUN_FILE}) nor a model directory (no config.json)")
    if initial:
        raise SvdadaptError("--initial evaluates a run's adapter as built; the target is a model, not a run")
    loaded = load_model(target, device=device)
    return loaded, {"kind": "model", "path": target, "location": loaded.location}


def _default_tasks(loaded: LoadedModel, about: dict) -> tuple[list[str], list[str]]:
    if is_causal_lm(loaded.model):
        return DEFAULT_SOURCES, []
    task = about.get("trained_task")
    if task and task != "sft":
        return [], [task]
    raise SvdadaptError("this model is not a causal LM and has no trained task on record; name one with --tasks")


def results_file(opts: EvalOptions) -> Path:
    """Where the results go: --out, or the target's eval/results.json (written when it is a run); a
    link is followed, so the results replace the file it leads to and the link stays."""
    default = "initial.json" if opts.initial else "results.json"  # the adapter as built never replaces the trained
    path = Path(opts.out).expanduser() if opts.out else Path(opts.target).expanduser() / "eval" / default
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _results_path(opts: EvalOptions) -> Path | None:
    """The JSON file the results are written to (None: printed only, the target is not a run)."""
    return results_file(opts) if opts.out or (Path(opts.target).expanduser() / RUN_FILE).is_file() else None


def check_results_out(out: Path) -> None:
    """Refuse an --out that is a directory, or a file that is not an earlier evaluation's results
    (a run's run.json, a data file...): evaluating never destroys other files."""
    if out.is_dir():
        raise SvdadaptError(f"--out {out} is a directory; name a JSON file")
    if not out.exists():
        return
    try:
        earlier = json.loads(out.read_text(encoding="utf-8"))
        ours = isinstance(earlier, dict) and (
            earlier.get("format") == FORMAT or {"target", "perplexity", "tasks"} <= set(earlier)  # or an older one
        )
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise SvdadaptError(f"--out {out} exists and is not an svdadapt evaluation's results; name another file")


def evaluate(opts: EvalOptions, progress: bool = True) -> EvalResult:
    """Evaluate as the CLI does: the results, and the JSON file they were written to."""
    out = _results_path(opts)
    if out is None:
        return _evaluate(opts, None, progress)
    with exclusive(out):
        check_results_out(out)
        return _evaluate(opts, out, progress)


def _evaluate(opts: EvalOptions, out: Path | None, progress: bool) -> EvalResult:
    started = time.monotonic()
    sources, tasks = split_list(opts.perplexity), split_list(opts.tasks)
    precheck(sources, tasks, opts.settings.lm_eval_include)
    loaded, about = load_target(opts.target, backend.resolve_device(opts.device), opts.initial, opts.adapter)
    if not sources and not tasks:
        sources, tasks = _default_tasks(loaded, about)
    results = evaluate_model(loaded.model, loaded.tokenizer, sources, tasks, opts.settings, progress)
    s = opts.settings
    settings = {k: getattr(s, k) for k in ("seq_len", "max_windows", "batch_size", "limit", "template")}
    results = {
        "format": FORMAT, "target": about, **results, "options": settings,
        "seconds": round(time.monotonic() - started, 1),
    }  # fmt: skip
    if out is not None:
        write_json(out, results)
    return EvalResult(results, out)
