"""An optional bridge to lm-evaluation-harness (``pip install svdadapt[eval]``) for the CorDA seed's
benchmarks (nq_open, triviaqa, gsm8k, ...): ``lm_eval.simple_evaluate`` on an ``HFLM`` that wraps the
model already in memory (a merged model, or a run's base with its adapters injected)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedTokenizerBase

from ..errors import SvdadaptError
from ..hub import hub_reachable, offline_requested, require_hub

INSTALL = "pip install svdadapt[eval]"
_DATA_ERRORS = ("datasets", "huggingface_hub", "requests", "urllib3", "fsspec", "aiohttp")


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise SvdadaptError(f"lm-eval tasks need lm-evaluation-harness; install it with `{INSTALL}`") from None
    return lm_eval, HFLM, TaskManager


def lm_eval_installed() -> bool:
    """Whether lm-evaluation-harness can be imported (found without importing it: seconds)."""
    try:
        return importlib.util.find_spec("lm_eval") is not None
    except (ImportError, ValueError):
        return False


def check_harness(names: Sequence[str], include_path: str | None = None):
    """lm-eval's installation first (no hub helps without it), then the hub (the tasks' data comes
    from it): one-line errors. Tasks of an --lm-eval-include directory may read local files: without
    the hub they run offline (datasets and the hub client told so), and a task that needs the hub
    after all fails in one line."""
    if not lm_eval_installed():
        _import_lm_eval()  # says to install it
    listed = ", ".join(names)
    if include_path is not None and not offline_requested() and not hub_reachable():
        os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    else:
        require_hub(f"the data of lm-eval task(s) {listed}", "set HF_DATASETS_OFFLINE=1 to use data already cached")
    return _import_lm_eval()


def _is_data_error(exc: BaseException) -> bool:
    return isinstance(exc, (ConnectionError, TimeoutError, OSError)) or type(exc).__module__.startswith(_DATA_ERRORS)


def _metrics(row: dict) -> dict[str, float]:
    """lm-eval's ``{"acc,none": 0.5, "acc_stderr,none": ...}`` → ``{"acc": 0.5, "acc_stderr": ...}``."""
    out = {}
    for key, value in row.items():
        if key == "sample_len":
            out["examples"] = int(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            metric, _, flt = key.partition(",")
            out[metric if flt in ("", "none") else f"{metric} ({flt})"] = float(value)
    return out


def lm_eval_tasks(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    names: Sequence[str],
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    include_path: str | None = None,
    max_length: int | None = None,
) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from lm-evaluation-harness for each named task (or group)."""
    listed = ", ".join(names)
    lm_eval, HFLM, TaskManager = check_harness(names, include_path)
    manager = TaskManager(include_path=include_path)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise SvdadaptError(f"lm-eval has no task {unknown[0]!r}; list them with `lm-eval ls tasks`")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    try:
        output = lm_eval.simple_evaluate(
            model=lm, tasks=list(names), num_fewshot=num_fewshot, limit=limit, task_manager=manager,
            log_samples=False, bootstrap_iters=0,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 — only data-loading failures become one-line errors
        if not _is_data_error(exc):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SvdadaptError(f"could not fetch the data of lm-eval task(s) {listed} ({first})") from None
    return {task: _metrics(row) for task, row in output["results"].items()}
