"""The model ``svdadapt generate`` continues prompts with: a run (its base with the adapter, and any
trained head), a model directory (e.g. merged) or anything ``--model`` accepts, or a PEFT adapter
folder (e.g. exported) on the model ``--base`` names. It must be a causal language model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import SvdadaptError
from ..files import check_safetensors, first_line, read_json
from ..models import LOAD_ERRORS, load_model, load_tokenizer
from ..runs import RUN_FILE, Run

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")


@dataclass
class Generator:
    model: nn.Module  # in eval mode, on the device asked for
    tokenizer: Any
    kind: str  # "run", "model" or "adapter"


def _require_causal(model: nn.Module, target: str) -> None:
    if not type(model).__name__.endswith(CAUSAL_HEADS):
        raise SvdadaptError(
            f"{target} is not a causal language model ({type(model).__name__}); generate needs one "
            "(a run of a decoder such as Llama or GPT-2, or such a model)"
        )


def _adapter(path: Path, base: str | None, device: str) -> Generator:
    config = read_json(path / ADAPTER_CONFIG, "PEFT adapter config", "export the adapter again")
    if base is None:
        named = config.get("base_model_name_or_path")
        hint = f" (its {ADAPTER_CONFIG} names {named!r})" if named else ""
        raise SvdadaptError(f"{path} is a PEFT adapter; name the model it applies to with --base MODEL{hint}")
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise SvdadaptError(f"{path} has no {ADAPTER_WEIGHTS}; svdadapt loads adapters saved as safetensors only")
    check_safetensors(weights, "PEFT adapter weights", "export the adapter again")
    try:
        from peft import PeftModel
    except ImportError:
        raise SvdadaptError("loading a PEFT adapter folder needs PEFT: pip install peft") from None
    loaded = load_model(base, device=device)
    _require_causal(loaded.model, f"--base {base}")
    try:
        model = PeftModel.from_pretrained(loaded.model, str(path), is_trainable=False)
    except LOAD_ERRORS as exc:
        raise SvdadaptError(f"could not apply the adapter {path} to --base {base}: {first_line(exc)}") from None
    has_tokenizer = (path / "tokenizer_config.json").is_file()
    return Generator(model.eval(), load_tokenizer(str(path)) if has_tokenizer else loaded.tokenizer, "adapter")


def load_generator(target: str, base: str | None, device: str) -> Generator:
    """The model ``target`` names, ready to generate on ``device`` (``base``: for a PEFT adapter folder)."""
    path = Path(target).expanduser()
    is_adapter = path.is_dir() and (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()
    if base is not None and not is_adapter:
        raise SvdadaptError(f"--base is for a PEFT adapter folder; {target} is not one (it holds its own model)")
    if is_adapter:
        return _adapter(path, base, device)
    if (path / RUN_FILE).is_file():
        run = Run.open(path)
        run.require_settled("generating with it")
        loaded = run.load_adapted(device=device)
        _require_causal(loaded.model, target)
        return Generator(loaded.model, loaded.tokenizer, "run")
    if path.is_dir() and not (path / "config.json").is_file():
        raise SvdadaptError(
            f"{path} is neither an svdadapt run (no {RUN_FILE}), a model directory (no config.json) nor a PEFT "
            f"adapter folder (no {ADAPTER_CONFIG})"
        )
    loaded = load_model(target, device=device)
    _require_causal(loaded.model, target)
    return Generator(loaded.model, loaded.tokenizer, "model")
