"""``svdadapt eval``: evaluate a run (its base with the adapters and any trained head) or a model,
write the results as JSON (``RUN/eval/results.json`` or ``--out``) and print a one-screen table."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ..adapters.inject import inject
from ..atomic import write_json
from ..backend import resolve_device
from ..data.templates import TEMPLATES
from ..errors import SvdadaptError
from ..models import LoadedModel, load_model
from ..options import opt
from ..runs import RUN_FILE, Run
from .suite import TASK_HELP, evaluate_model, is_causal_lm, precheck, split_list

DEFAULT_SOURCES = ["wiki-heldout"]


@dataclass(kw_only=True)
class EvalOptions:
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
    seq_len: int | None = opt(None, "tokens per perplexity window (default: 2048, or the model's limit if lower)")
    max_windows: int | None = opt(None, "evaluate at most this many windows per source (default: all)")
    batch_size: int = opt(4, "windows or examples per forward pass")
    limit: int | None = opt(None, "evaluate at most this many examples per task (default: all)")
    template: str | None = opt(
        None, "polarity-instruct: prompt template, as in training (default: chat if the tokenizer has one, else "
        "plain)", choices=list(TEMPLATES),
    )  # fmt: skip
    data_dir: str | None = opt(None, "glue: local directory holding validation.* (or dev.*) in csv/tsv/json/jsonl")
    num_fewshot: int | None = opt(None, "lm-eval: few-shot examples (default: each task's own)")
    lm_eval_include: str | None = opt(None, "lm-eval: directory of extra task YAML files")
    device: str | None = opt(None, "cpu, cuda or cuda:N (default: cuda when available)")
    out: str | None = opt(None, "results JSON file (default: RUN/eval/results.json for a run; none for a model)")


def load_target(target: str, device: str) -> tuple[LoadedModel, dict]:
    """The model to evaluate and what it is: a run (base + adapters + trained head) or a model."""
    path = Path(target).expanduser()
    if (path / RUN_FILE).is_file():
        run = Run.open(path)
        loaded = run.load_base(device=device)
        inject(loaded.model, run.adapters())
        for name, state in run.head_state().items():  # a trained classification head
            loaded.model.get_submodule(name).load_state_dict(state)
        loaded.model.eval()
        training = run.meta.get("training") or {}
        about = {"kind": "run", "path": str(path), "method": run.meta["method"], "stage": run.meta.get("stage")}
        return loaded, {**about, "trained_task": training.get("task")}
    if path.is_dir() and not (path / "config.json").is_file():
        raise SvdadaptError(f"{path} is neither an svdadapt run (no {RUN_FILE}) nor a model directory (no config.json)")
    loaded = load_model(target, device=device)
    return loaded, {"kind": "model", "path": target, "location": loaded.location}


def _default_tasks(loaded: LoadedModel, about: dict) -> tuple[list[str], list[str]]:
    if is_causal_lm(loaded.model):
        return DEFAULT_SOURCES, []
    task = about.get("trained_task")
    if task and task != "sft":
        return [], [task]
    raise SvdadaptError("this model is not a causal LM and has no trained task on record; name one with --tasks")


def _out_path(opts: EvalOptions) -> Path | None:
    if opts.out:
        return Path(opts.out).expanduser()
    path = Path(opts.target).expanduser()
    return path / "eval" / "results.json" if (path / RUN_FILE).is_file() else None


def evaluate(opts: EvalOptions, progress: bool = True) -> tuple[dict, Path | None]:
    """Evaluate as the CLI does; returns the results and the JSON file they were written to."""
    started = time.monotonic()
    sources, tasks = split_list(opts.perplexity), split_list(opts.tasks)
    precheck(sources, tasks)
    out = _out_path(opts)
    if out is not None and out.is_dir():
        raise SvdadaptError(f"--out {out} is a directory; name a JSON file")
    device = resolve_device(opts.device)
    loaded, about = load_target(opts.target, device)
    if not sources and not tasks:
        sources, tasks = _default_tasks(loaded, about)
    results = evaluate_model(
        loaded.model, loaded.tokenizer, sources, tasks, seq_len=opts.seq_len, max_windows=opts.max_windows,
        batch_size=opts.batch_size, limit=opts.limit, template=opts.template, data_dir=opts.data_dir,
        num_fewshot=opts.num_fewshot, lm_eval_include=opts.lm_eval_include, progress=progress,
    )  # fmt: skip
    settings = {k: getattr(opts, k) for k in ("seq_len", "max_windows", "batch_size", "limit", "template")}
    results = {"target": about, **results, "options": settings, "seconds": round(time.monotonic() - started, 1)}
    if out is not None:
        write_json(out, results)
    return results, out
