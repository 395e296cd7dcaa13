"""4-bit and 8-bit bases through bitsandbytes: the one place that knows its layers, its config and
its traps.

- :func:`require_bitsandbytes`: the module, or one line saying how to install it.
- :func:`write_quantized_checkpoint`: a float checkpoint directory (whose target weights are already
  the dequantized values bitsandbytes stores, so it quantizes them to the same codes) loaded with
  ``BitsAndBytesConfig`` on CPU and saved as a standard transformers quantized checkpoint
  (``quantization_config`` in ``config.json``), the layers :func:`kept_float` names left float;
  :func:`quantizable`: whether a layer is quantized (and computed with exactly what is stored).
- :func:`quantized_load_kwargs` / :func:`prepare_quantized`: what ``from_pretrained`` needs for such
  a checkpoint on CPU or CUDA, and what every loaded model needs afterwards: the **AVX512-BF16
  repack trap** closed. bitsandbytes' CPU ``Linear4bit`` repacks its weight in place during an
  eval-mode forward without gradients (on CPUs with AVX512-BF16); afterwards backward silently
  drops the gradients that flow through the base. ``support_avx512bf16_for_cpu = False`` on every
  ``Linear4bit`` keeps the weight as stored.
- :func:`adapters_attached`: while a ``Trainer`` is made, a quantized model with svdadapt's adapters
  passes transformers' "purely quantized" check.
- :func:`is_quantized_layer`, :func:`dequantized_weight`, :func:`dequantize_model`: a quantized
  layer's values as an (out, in) float32 matrix, and a whole model made float (merging).
- :func:`quantization_of`: the kind a checkpoint directory's ``config.json`` says, or None.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..errors import SvdadaptError

# On CPUs with AVX512-BF16, importing bitsandbytes warns that the optional ``kernels`` package's fused
# 4-bit matmul is missing. That kernel serves only the repacked weight that prepare_quantized turns off,
# so the warning (printed by every command, since transformers and PEFT import bitsandbytes) says nothing
# about what runs here.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

QUANT_KINDS = ("nf4", "fp4", "int8")
INSTALL = "pip install 'svdadapt[quant]' (bitsandbytes==0.50.2)"


def require_bitsandbytes(doing: str):
    """The bitsandbytes module, or one line: ``doing`` needs it and how to install it."""
    try:
        import bitsandbytes
        import bitsandbytes.functional  # noqa: F401  (quantize_4bit, dequantize_4bit)
    except ImportError:
        raise SvdadaptError(f"{doing} needs bitsandbytes, which is not installed: {INSTALL}") from None
    return bitsandbytes


def check_kernels(device: torch.device | str, doing: str) -> None:
    """One line when this bitsandbytes cannot run 4-bit layers on ``device`` (a build without its CPU
    kernels, or no CUDA one): a tiny quantize, dequantize and product there, before any model loads."""
    bnb = require_bitsandbytes(doing)
    try:
        import bitsandbytes.functional as functional

        W = torch.linspace(-1, 1, 64 * 2, device=device).reshape(2, 64)  # (out, in)
        packed, state = functional.quantize_4bit(W, blocksize=64, quant_type="nf4")
        values = functional.dequantize_4bit(packed, state)  # (2, 64)
        if not torch.isfinite(values).all():
            raise RuntimeError("non-finite values")
    except Exception as exc:  # what a missing kernel raises differs between versions and devices
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SvdadaptError(
            f"{doing} needs bitsandbytes' 4-bit kernels on {torch.device(device).type}, and bitsandbytes "
            f"{getattr(bnb, '__version__', '?')} here has none ({first[:160]}); "
            "CPU kernels: svdadapt[quant] pins bitsandbytes==0.50.2, which has them; or use a CUDA device"
        ) from None


def bnb_config(kind: str):
    """transformers' ``BitsAndBytesConfig`` for ``kind``: NF4/FP4 blocks of 64 computing in float32
    (no double quantization: the stored codes are the values svdadapt chose), or LLM.int8."""
    require_bitsandbytes(f"--quantize {kind}")
    from transformers import BitsAndBytesConfig

    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if kind not in ("nf4", "fp4"):
        raise SvdadaptError(f"--quantize {kind} is not one of {', '.join(QUANT_KINDS)}")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_compute_dtype=torch.float32)


def quantization_of(location: str | Path) -> str | None:
    """The kind of quantization a local checkpoint's ``config.json`` records (``nf4``, ``fp4``,
    ``int8``, or the method's name for another scheme), or None for a float checkpoint."""
    path = Path(location) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(quant, dict):
        return None
    if quant.get("quant_method") != "bitsandbytes":
        return str(quant.get("quant_method") or "unknown")
    if quant.get("load_in_8bit"):
        return "int8"
    return str(quant.get("bnb_4bit_quant_type") or "fp4")


def is_quantized_layer(module: nn.Module) -> bool:
    """A bitsandbytes ``Linear4bit`` or ``Linear8bitLt`` (without importing bitsandbytes)."""
    return type(module).__name__ in ("Linear4bit", "Linear8bitLt", "LinearNF4", "LinearFP4")


def quantized_load_kwargs(location: str | Path, device: torch.device | str) -> dict:
    """Extra ``from_pretrained`` arguments for the checkpoint at ``location``: for a bitsandbytes one,
    the kernels checked and every module placed on ``device`` as it loads; else none."""
    kind = quantization_of(location)
    if kind is None:
        return {}
    if kind not in QUANT_KINDS:
        raise SvdadaptError(f"{location} is quantized by {kind}; svdadapt loads bitsandbytes nf4/fp4/int8 bases only")
    doing = f"loading the {kind} base {location}"
    require_bitsandbytes(doing)
    if kind != "int8":
        check_kernels(device, doing)
    return {"device_map": {"": str(torch.device(device))}}


def prepare_quantized(model: nn.Module) -> int:
    """Close the AVX512-BF16 repack trap on every ``Linear4bit`` of ``model`` (see the module
    docstring); returns how many quantized layers it has."""
    count = 0
    for module in model.modules():
        if is_quantized_layer(module):
            count += 1
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    return count


@contextlib.contextmanager
def adapters_attached(model: nn.Module) -> Iterator[None]:
    """While a trainer is made: tell transformers that a quantized ``model`` carries trainable
    adapters (svdadapt's own, not PEFT's), so that its Trainer does not refuse it as "purely
    quantized"; the mark goes afterwards (saving would otherwise look for PEFT adapters)."""
    marked = getattr(model, "is_quantized", False) and not getattr(model, "_hf_peft_config_loaded", False)
    if marked:
        model._hf_peft_config_loaded = True
    try:
        yield
    finally:
        if marked:
            model._hf_peft_config_loaded = False


@torch.no_grad()
def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """A bitsandbytes layer's weight as the (out, in) float32 matrix it computes with."""
    import bitsandbytes.functional as functional

    weight = module.weight
    if type(module).__name__ == "Linear8bitLt":
        scale = weight.SCB if getattr(weight, "SCB", None) is not None else module.state.SCB  # (out,)
        return weight.data.to(torch.float32) * (scale.to(torch.float32)[:, None] / 127.0)  # (out, in)
    state = weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):  # repacked before the trap was closed: undo
        from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
        state = weight.quant_state
    return functional.dequantize_4bit(weight.data, state).to(torch.float32).reshape(state.shape)  # (out, in)


@torch.no_grad()
def dequantize_model(model: nn.Module) -> list[str]:
    """Replace every bitsandbytes layer of ``model`` by an ``nn.Linear`` holding its dequantized
    float32 weight and drop the model's quantization record, so it saves as a float checkpoint.
    Returns the layers replaced."""
    replaced = []
    for name, module in list(model.named_modules()):
        if not is_quantized_layer(module):
            continue
        W = dequantized_weight(module)  # (out, in)
        linear = nn.Linear(W.shape[1], W.shape[0], bias=module.bias is not None, device=W.device, dtype=W.dtype)
        linear.weight.copy_(W)
        if module.bias is not None:
            linear.bias.copy_(module.bias.to(W.dtype))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, linear)
        replaced.append(name)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # transformers' own record: config, conversions, flags
        quantizer.remove_quantization_config(model)
    return replaced


BLOCK = 64  # bitsandbytes' 4-bit block along the flattened weight


def quantizable(module: nn.Module, kind: str) -> bool:
    """Whether bitsandbytes quantizes ``module`` as ``kind`` and computes with what it stores: an
    ``nn.Linear`` (not GPT-2's Conv1D), and for 4-bit one whose rows are whole blocks of 64 (its CPU
    kernel misreads blocks that cross rows; every width of real models is a multiple of 64)."""
    if type(module) is not nn.Linear:
        return False
    return kind == "int8" or module.in_features % BLOCK == 0


def kept_float(model: nn.Module, kind: str) -> dict[str, str]:
    """The linear-like layers of ``model`` that a ``kind`` base keeps float, with why: the output
    head (as QLoRA), and those :func:`quantizable` refuses."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    kept = {}
    for name, module in model.named_modules():
        if module is head and head is not None:
            kept[name] = "the output head"
        elif type(module).__name__ == "Conv1D":
            kept[name] = "Conv1D"
        elif type(module) is nn.Linear and not quantizable(module, kind):
            kept[name] = f"in_features {module.in_features} not a multiple of {BLOCK}"
    return kept


def write_quantized_checkpoint(source: Path, out: Path, kind: str, keep_float: list[str]) -> None:
    """Load the float checkpoint ``source`` with bitsandbytes ``kind`` on CPU (float32), the layers
    ``keep_float`` (names, see :func:`kept_float`) left float, and save it to ``out`` as a standard
    quantized checkpoint."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = bnb_config(kind)
    config.llm_int8_skip_modules = list(keep_float)  # 4-bit too: transformers' modules_to_not_convert
    if kind != "int8":
        check_kernels("cpu", f"--quantize {kind}")
    archs = getattr(AutoConfig.from_pretrained(source), "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        auto = AutoModelForCausalLM
    elif any(a.endswith("ForSequenceClassification") for a in archs):
        auto = AutoModelForSequenceClassification
    else:
        auto = AutoModel
    model = auto.from_pretrained(
        source, quantization_config=config, device_map={"": "cpu"}, dtype=torch.float32, use_safetensors=True,
        trust_remote_code=False,
    )  # fmt: skip
    prepare_quantized(model)
    model.save_pretrained(out, safe_serialization=True)
