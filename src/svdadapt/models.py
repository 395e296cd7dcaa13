"""Loading a model by name: a local directory, a hub id, ``default`` or ``default-encoder``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .backend import (
    Placement,
    collection_paused,
    place,
    prepare_quantized,
    quantization_of,
    quantized_load_kwargs,
    resolve_device,
)
from .errors import SvdadaptError, unknown
from .files import check_safetensors, first_line, inside, read_json
from .fingerprint import model_identity
from .hub import require_hub
from .options import Options, opt

BUILTIN_MODELS = ("default", "default-encoder")
INDEX = "model.safetensors.index.json"
# what transformers raises for a model directory it cannot use: missing or unknown model_type, no
# tokenizer, weights of the wrong shape, unreadable files, remote code that is not trusted
LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError)
HEADS = {
    "causal-lm": AutoModelForCausalLM,
    "base": AutoModel,
    "seq-cls": AutoModelForSequenceClassification,
}


@dataclass(kw_only=True)
class PlacementOptions(Options):
    """Where the model's weights and the cached hidden states live while a command works."""

    offload: str = opt(
        "auto", "on: keep the model memory-mapped on the host as stored and bring one block at a time to "
        "--device; auto: do so whenever that holds less: the model would take over 80%% of the device's free "
        "memory, or in place would convert it to another dtype (a bfloat16 checkpoint on the CPU); off: never "
        "(a bare --offload means on)", choices=["auto", "on", "off"], nargs="?", const="on", how=True,
    )  # fmt: skip
    hidden_states_dir: str | None = opt(
        None, "keep the cached hidden states (of the calibration, or of compress's evaluation) in memory-mapped "
        "files under DIR (the default, in the temporary directory, when offloading and they would take over half "
        "the free memory)",
        metavar="DIR", how=True,
    )  # fmt: skip

    def check(self) -> None:
        folder = Path(self.hidden_states_dir).expanduser() if self.hidden_states_dir else None
        if folder is not None and folder.exists() and not folder.is_dir():
            raise SvdadaptError(f"--hidden-states-dir {folder} is a file; give a directory (it is made if missing)")

    @property
    def offload_choice(self) -> bool | None:
        """``load_model``'s ``offload``: True (on), False (off) or None (decided by what each would hold)."""
        return {"on": True, "off": False, "auto": None}[self.offload]


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str  # what the user asked for
    location: str  # the directory or hub id it came from
    placement: Placement  # where its weights live and where work on them runs


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or Path(spec).exists() or spec.count("/") > 1


def _check_local_dir(path: Path) -> None:
    ggufs = [path] if path.suffix == ".gguf" and path.is_file() else sorted(path.glob("*.gguf"))
    if ggufs and not any(path.glob("*.safetensors")):
        raise SvdadaptError(
            f"{path} holds a GGUF checkpoint; svdadapt needs a safetensors one: convert it once with transformers, "
            f"AutoModelForCausalLM.from_pretrained({str(ggufs[0].parent)!r}, gguf_file={ggufs[0].name!r})"
            ".save_pretrained(OUT) and the "
            "same with AutoTokenizer, then pass OUT"
        )
    if not path.is_dir():
        raise SvdadaptError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise SvdadaptError(f"{path} is not a model directory (no config.json)")
    has_safetensors = any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
    if not has_safetensors:
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise SvdadaptError(
                f"{path} holds only pickle weights (*.bin/*.pt); svdadapt loads safetensors only — "
                "re-save the model with save_pretrained(..., safe_serialization=True)"
            )
        raise SvdadaptError(f"model directory {path} has no weights (*.safetensors)")
    fix = "the model directory is damaged: copy or save it again"
    config = read_json(path / "config.json", "model config", fix)
    if config.get("auto_map") and config.get("model_type") not in CONFIG_MAPPING:
        raise SvdadaptError(
            f"{path} needs its own modelling code (auto_map in config.json, model_type "
            f"{config.get('model_type')!r} unknown to transformers); svdadapt never runs a checkpoint's code: "
            "use a model of an architecture transformers has"
        )
    shards = sorted(path.glob("*.safetensors"))
    if (path / INDEX).is_file():
        weight_map = read_json(path / INDEX, "checkpoint index", fix).get("weight_map")
        if not isinstance(weight_map, dict):
            raise SvdadaptError(f"checkpoint index {path / INDEX} has no weight_map; {fix}")
        shards = [inside(path, name, str(path / INDEX)) for name in sorted(set(weight_map.values()))]
    names: list[str] = []
    for shard in shards:  # headers only: a truncated or foreign file is named before transformers reads it
        names.extend(check_safetensors(shard, "model weights", fix))
    _check_layer_count(path, config, names, fix)


LAYER_COUNTS = ("num_hidden_layers", "n_layer", "num_layers")  # how configs name their number of blocks
NUMBERED = re.compile(r"^(.*?)\.(\d+)\.")  # "model.layers.12.mlp..." → ("model.layers", "12")


def _check_layer_count(path: Path, config: dict, names: list[str], fix: str) -> None:
    """The blocks the config asks for are the blocks the weights hold, checked from the headers
    before any model is built: a config edited to more layers than the weights would otherwise build
    random ones silently (or, at 100,000, run out of memory building them)."""
    attr = next((a for a in LAYER_COUNTS if isinstance(config.get(a), int) and not isinstance(config[a], bool)), None)
    if attr is None:
        return
    stacks: dict[str, int] = {}
    for name in names:
        found = NUMBERED.match(name)
        if found:
            stacks[found[1]] = max(stacks.get(found[1], 0), int(found[2]) + 1)
    if stacks and config[attr] not in stacks.values():
        held = max(stacks.values())
        raise SvdadaptError(
            f"{path / 'config.json'} asks for {config[attr]} blocks ({attr}) but the weights hold {held}; the config "
            f"and the weights do not match: {fix}"
        )


def check_loading(model: nn.Module, info: dict, spec: str) -> None:
    """After transformers built the model: every weight of its body came from the checkpoint (only a
    new task head may start random), else one line naming the first missing tensor."""
    body = getattr(model, "base_model_prefix", "")
    heads = {n for n, _ in model.named_children() if n != body} if hasattr(model, body) else set()
    missing = [k for k in info.get("missing_keys") or () if k.split(".")[0] not in heads]
    if missing:
        raise SvdadaptError(
            f"model {spec!r}: its checkpoint lacks {len(missing)} weight(s) its config needs, e.g. "
            f"{sorted(missing)[0]}; the config and the weights do not match"
        )


def resolve_location(spec: str) -> str:
    """The local directory or hub id that ``spec`` names (converting the embedded model if needed)."""
    from . import assets

    if spec == "default":
        return str(assets.default_model_dir())
    if spec == "default-encoder":
        return str(assets.default_encoder_dir())
    path = Path(spec).expanduser()
    if _looks_like_path(spec):
        _check_local_dir(path)
        return str(path)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(spec, "config.json")
    if not isinstance(cached, str):
        require_hub(f"model {spec!r}", "pass a local model directory, `default` or `default-encoder`")
    return spec


def require_float(spec: str, doing: str) -> None:
    """One line when ``spec`` names a local quantized checkpoint (a 4-bit run's base): ``doing`` needs
    the float weights."""
    path = Path(spec).expanduser()
    if _looks_like_path(spec) and path.is_dir() and quantization_of(path) is not None:
        raise SvdadaptError(
            f"{spec} is a quantized checkpoint ({quantization_of(path)}); {doing} needs the float weights: pass the "
            "float original (a run's quantized base comes from build --quantize)"
        )


def head_for(location: str, head: str) -> str:
    """Pick ``causal-lm`` or ``base`` for ``head="auto"`` from the checkpoint's architectures."""
    if head != "auto":
        return head
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=False)
    except LOAD_ERRORS as exc:
        raise SvdadaptError(f"could not read the config of {location}: {first_line(exc)}") from None
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal-lm"
    return "seq-cls" if any(a.endswith("ForSequenceClassification") for a in archs) else "base"


def load_tokenizer(location: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
    except LOAD_ERRORS as exc:
        raise SvdadaptError(f"could not load the tokenizer of {location}: {first_line(exc)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(
    spec: str,
    head: str = "auto",
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    offload: bool | None = False,
    **model_kwargs,
) -> LoadedModel:
    """Load model and tokenizer; ``head`` is ``auto``, ``causal-lm``, ``base`` or ``seq-cls``.

    ``offload``: keep the weights memory-mapped on the host, as stored, and bring each block to
    ``device`` only while it works (True), load everything onto ``device`` (False), or decide by
    which holds less (None; a note says when it offloads, and why)."""
    device = resolve_device(str(device))  # one line for a device that is no device, or not here
    location = resolve_location(spec)
    head = head_for(location, head)
    if head not in HEADS:
        raise unknown("model head", head, HEADS)
    quantized = quantized_load_kwargs(location, device)  # a 4-/8-bit base: loaded onto its device as it loads
    placement = place(location, device, False if quantized else offload)
    if dtype is None:
        dtype = torch.float32 if torch.device(device).type == "cpu" else "auto"
    if offload is None and placement.offloaded:
        print(f"svdadapt: note: offloading ({placement.reason}): blocks go to {device} one at a time")
    try:
        with collection_paused():  # the first load imports most of transformers' modelling code
            model, info = HEADS[head].from_pretrained(
                location,
                dtype=placement.load_dtype(dtype),
                use_safetensors=True,
                trust_remote_code=False,
                output_loading_info=True,
                **quantized,
                **model_kwargs,
            )
    except LOAD_ERRORS as exc:
        raise SvdadaptError(f"could not load model {spec!r}: {first_line(exc)}") from None
    check_loading(model, info, spec)
    tokenizer = load_tokenizer(location)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # sequence classification needs it
    if quantized:
        prepare_quantized(model)  # the AVX512-BF16 repack trap closed before any forward
    else:
        model.to(placement.home)
    model.eval()
    if placement.offloaded:
        placement.watch(location)
        if not placement.mapped:
            print(f"svdadapt: note: {spec} could not be mapped from disk; its weights are held in host memory")
    return LoadedModel(model, tokenizer, spec, location, placement)


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position embeddings allow, if it says."""
    return positions_of(getattr(model, "config", None))


def positions_of_model(spec: str) -> int | None:
    """:func:`max_positions` of the model ``spec`` names, from its config alone (nothing loaded)."""
    location = resolve_location(spec)
    try:
        return positions_of(AutoConfig.from_pretrained(location, trust_remote_code=False))
    except LOAD_ERRORS as exc:
        raise SvdadaptError(f"could not read the config of {location}: {first_line(exc)}") from None


def positions_of(config) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


EMBEDDED = ("default", "default-encoder")


def origin(loaded: LoadedModel) -> dict:
    """Where a model came from, as a run records it without any path of this machine: its name
    (a hub id, ``default``, or a local folder's own name), and for a hub model its id and revision
    (then stock PEFT can find it anywhere)."""
    spec = loaded.name
    hub = not _looks_like_path(spec) and spec not in EMBEDDED
    return {
        "name": spec if hub or spec in EMBEDDED else Path(spec).expanduser().resolve().name,
        "hub_id": spec if hub else None,
        "revision": getattr(loaded.model.config, "_commit_hash", None) if hub else None,
    }


def describe_model(loaded: LoadedModel) -> dict:
    """Identity recorded in stores and run directories: what was asked for, where it came from, and
    the architecture and weights fingerprint."""
    return {**model_identity(loaded.model), "name": loaded.name, "location": loaded.location}
