"""What can be evaluated, as one table of task kinds, and :func:`evaluate_model` that runs a list of
perplexity sources and tasks on a model held in memory.

Task specs: ``polarity-instruct`` (causal LM; accuracy by label likelihood on the 40 held-out polarity
examples), ``polarity`` and ``glue:NAME`` (sequence classification; GLUE metrics on the validation
split), ``lm-eval:TASK`` (causal LM; lm-evaluation-harness).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedTokenizerBase

from ..data.sources import SOURCES, resolve
from ..data.tasks import CLASSIFICATION_TASKS
from ..errors import SvdadaptError, unknown
from ..hub import require_hub
from ..models import max_positions
from ..runs import task_type_of
from .perplexity import evaluation_windows, perplexity
from .settings import EvalSettings, WindowOptions

DEFAULT_SEQ_LEN = 2048
TASK_HELP = "polarity-instruct, polarity, glue:cola|sst2|mrpc|stsb|qnli|rte, lm-eval:TASK"


def task_kind(spec: str) -> str:
    """``instruct``, ``classification`` or ``lm-eval`` for a task spec; unknown specs are an error."""
    if spec == "polarity-instruct":
        return "instruct"
    glue = spec.removeprefix("glue:")
    if spec == "polarity" or (spec.startswith("glue:") and glue in CLASSIFICATION_TASKS and glue != "polarity"):
        return "classification"
    if spec.startswith("lm-eval:") and spec[8:].strip():
        return "lm-eval"
    raise unknown("task", spec, [TASK_HELP])


def split_list(value: str | Sequence[str] | None) -> list[str]:
    """``"a, b"`` or ``["a", "b"]`` → ``["a", "b"]`` (empty entries dropped)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [s.strip() for s in items if s.strip()]


def check_source(spec: str) -> None:
    """Fail early, before a model loads, on a perplexity source that is unknown or unreachable."""
    if spec in SOURCES:
        if SOURCES[spec].hub is not None:
            require_hub(spec, f"download it elsewhere and pass a local text file, e.g. --perplexity {spec}.txt")
    elif spec.startswith("hf:"):
        require_hub(spec[3:], "pass a local text file")
    else:
        resolve(spec)  # a local file (cheap to read) or an unknown name (a clear error)


def precheck(sources: Sequence[str], tasks: Sequence[str], lm_eval_include: str | None = None) -> None:
    """Every check that needs no model: task names, sources, and lm-eval's data and installation."""
    for spec in tasks:
        task_kind(spec)
    for spec in sources:
        check_source(spec)
    harness = [t.removeprefix("lm-eval:") for t in tasks if task_kind(t) == "lm-eval"]
    if harness:
        from .harness import check_harness

        check_harness(harness, lm_eval_include)


def is_causal_lm(model: nn.Module) -> bool:
    return task_type_of(model) == "CAUSAL_LM"


def resolve_seq_len(model: nn.Module, settings: WindowOptions) -> int:
    """``--seq-len``, or 2048 capped at the model's positions; beyond the model's limit is an error."""
    limit = max_positions(model)
    settings.check_length(limit)
    if settings.seq_len is None:
        return min(DEFAULT_SEQ_LEN, limit) if limit else DEFAULT_SEQ_LEN
    return settings.seq_len


def check_compatible(model: nn.Module, sources: Sequence[str], tasks: Sequence[str]) -> None:
    """Refuse, before any work, what this kind of model cannot be evaluated on."""
    causal = is_causal_lm(model)
    needs_lm = [*(f"perplexity on {s}" for s in sources), *(t for t in tasks if task_kind(t) != "classification")]
    if needs_lm and not causal:
        raise SvdadaptError(f"{needs_lm[0]} needs a causal language model; this model is not one")
    if causal:
        for t in tasks:
            if task_kind(t) == "classification":
                raise SvdadaptError(f"task {t} needs a sequence-classification model; this is a causal LM")


def evaluate_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    perplexity_sources: Sequence[str] = ("wiki-heldout",),
    tasks: Sequence[str] = (),
    settings: EvalSettings | None = None,
    progress: bool = True,
) -> dict:
    """Evaluate an in-memory model: ``{"perplexity": {source: {...}}, "tasks": {task: {metric: ...}}}``.

    Perplexity is over non-overlapping windows of ``settings.seq_len`` tokens (``max_windows`` of them
    spread over the text, or the first, by ``settings.windows``); ``polarity-instruct`` is scored by
    label likelihood with ``template``; ``limit`` caps the examples of each task.
    """
    from .classification import classification_metrics
    from .harness import lm_eval_tasks
    from .likelihood import label_likelihood_accuracy, polarity_choices

    s = settings or EvalSettings()
    sources, tasks = split_list(perplexity_sources), split_list(tasks)
    precheck(sources, tasks, s.lm_eval_include)
    check_compatible(model, sources, tasks)
    length = resolve_seq_len(model, s) if sources else s.seq_len
    results: dict = {"perplexity": {}, "tasks": {}}
    for source in sources:
        windows = evaluation_windows(source, tokenizer, length, s.max_windows, s.windows)
        results["perplexity"][source] = perplexity(model, windows, s.batch_size, progress).as_dict()
    for spec in tasks:
        kind = task_kind(spec)
        if kind == "instruct":
            examples = polarity_choices(s.limit)
            result = label_likelihood_accuracy(model, tokenizer, examples, s.template, s.batch_size, progress)
        elif kind == "classification":
            task = CLASSIFICATION_TASKS[spec.removeprefix("glue:")]
            result = classification_metrics(model, tokenizer, task, s.data_dir, s.limit, s.batch_size, progress)
        else:
            name = spec.removeprefix("lm-eval:")
            found = lm_eval_tasks(model, tokenizer, [name], s.limit, s.batch_size, s.num_fewshot, s.lm_eval_include)
            for task_name, metrics in found.items():
                results["tasks"][f"lm-eval:{task_name}"] = metrics
            continue
        results["tasks"][spec] = result
    return results
