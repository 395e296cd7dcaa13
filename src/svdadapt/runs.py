"""Run directories: what ``build`` writes and ``train`` updates — one kind of thing, so ``merge`` and
``export`` work on either.

    run.json                    method, decomposition and the row's build parameters (``params``), ranks,
                                the original model's identity, the base's fingerprint, stage ("built" or
                                "trained"), per-layer facts (rank, alpha, damping)
    base/                       the frozen base as an ordinary transformers model directory (residual or
                                truncated weights); absent when the method leaves the base untouched
    adapter/                    the current adapter as a stock PEFT LoRA checkpoint (KaSA's ΔΣ folded into B)
    adapter_state.safetensors   svdadapt's full adapter state: A, B, ΔΣ and the base change P, Q
    initial_state.safetensors   the same at build time
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .adapters.peft_format import lora_on_base, write_peft_lora
from .adapters.state import AdapterSet
from .atomic import atomic_directory, write_json, write_safetensors
from .backend import link_or_copy
from .errors import SvdadaptError
from .files import (
    check_safetensors,
    file_record,
    inside,
    load_tensors,
    no_links_out,
    read_json,
    require_fields,
    verify_record,
)
from .fingerprint import weights_fingerprint
from .methods import Method

FORMAT = "svdadapt.run"
VERSION = 1
RUN_FILE = "run.json"
STATE_FILE = "adapter_state.safetensors"
INITIAL_FILE = "initial_state.safetensors"
HEAD_FILE = "head.safetensors"
PEFT_WEIGHTS = "adapter/adapter_model.safetensors"
DAMAGED = "the run is damaged: build it again (svdadapt build) into a new directory"
REQUIRED = {
    "version": int, "method": str, "stage": str, "layers": dict, "original": dict, "base_fingerprint": str,
}  # fmt: skip


def check_run_out(out: Path, overwrite: bool = False) -> None:
    """Refuse an --out that exists and is not an svdadapt run, or that holds a run someone trained
    (or is training) unless ``overwrite``; a run that was only built is replaced."""
    if out.exists() and not out.is_dir():
        raise SvdadaptError(f"--out {out} is a file; choose a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / RUN_FILE).is_file():
        raise SvdadaptError(f"--out {out} exists and is not an svdadapt run; choose another directory")
    if overwrite:
        return
    try:
        stage = json.loads((out / RUN_FILE).read_text(encoding="utf-8")).get("stage")
    except (OSError, ValueError, AttributeError):
        stage = None
    if stage != "built" or (out / "train_results.json").exists() or (out / "checkpoints").exists():
        raise SvdadaptError(
            f"--out {out} holds a trained (or damaged) run; pass --overwrite to replace it, or choose another --out"
        )


def check_new_out(out: Path, what: str) -> None:
    """Refuse an --out that exists and is not empty (for merged models and exports)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SvdadaptError(f"--out {out} already exists; choose a new directory for the {what}")


def task_type_of(model: nn.Module) -> str | None:
    archs = getattr(model.config, "architectures", None) or [type(model).__name__]
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "CAUSAL_LM"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "SEQ_CLS"
    return None


@dataclass
class Run:
    path: Path
    meta: dict

    @classmethod
    def open(cls, path: str | Path) -> Run:
        path = Path(path)
        run_file = path / RUN_FILE
        if not run_file.is_file():
            raise SvdadaptError(f"{path} is not an svdadapt run (no {RUN_FILE}); create one with svdadapt build")
        no_links_out(path, "run", skip=("checkpoints", "eval"))
        meta = read_json(run_file, "run file", DAMAGED)
        if meta.get("format") != FORMAT:
            raise SvdadaptError(f"{run_file} is not an svdadapt run file")
        require_fields(meta, REQUIRED, str(run_file), DAMAGED)
        if meta["version"] > VERSION:
            raise SvdadaptError(f"{path} was written by a newer svdadapt (run version {meta['version']})")
        for name, facts in meta["layers"].items():
            require_fields(facts, {"rank": int, "alpha": (int, float)}, f"{run_file}, layer {name!r}", DAMAGED)
        Method.from_record(meta)  # a method this version knows, with parameters it has
        run = cls(path, meta)
        for name, record in (meta.get("files") or {}).items():  # sizes and headers: cheap, before any use
            file = inside(path, name, str(run_file))
            verify_record(file, record, "run file", DAMAGED, checksum=False)
            check_safetensors(file, "run file", DAMAGED)
        return run

    def verify(self, name: str, what: str) -> Path:
        """The run's file ``name``, checked against its header and what run.json records of it."""
        path = inside(self.path, name, str(self.path / RUN_FILE))
        verify_record(path, (self.meta.get("files") or {}).get(name), what, DAMAGED)
        check_safetensors(path, what, DAMAGED)
        return path

    def _tensors(self, name: str, what: str) -> dict[str, torch.Tensor]:
        return load_tensors(self.verify(name, what), what, DAMAGED)

    def require_settled(self, doing: str) -> None:
        """A one-line error if the run is mid-training (interrupted or killed, or training now): its
        adapter is not what any training ended with, so ``doing`` it would be wrong."""
        if self.meta.get("stage") == "training":
            raise SvdadaptError(
                f"{self.path} is mid-training (interrupted, or training now), so {doing} would use an unfinished "
                f"adapter: continue it with `svdadapt train {self.path} --resume ...` (kept with --save-checkpoints) "
                "or train it again"
            )

    @property
    def method(self) -> Method:
        """The row of the methods table this run was built with, configured with its build parameters
        as recorded."""
        return Method.from_record(self.meta)

    @property
    def base_changed(self) -> bool:
        """Whether the run's base differs from the original (a residual or truncated base, a new head)."""
        recorded = self.meta.get("base_changed")
        return recorded if isinstance(recorded, bool) else (self.path / "base").is_dir()

    @property
    def quantization(self) -> dict | None:
        """What run.json records of a quantized base (kind, how, iters, per-layer errors), or None."""
        recorded = self.meta.get("quantization")
        return recorded if isinstance(recorded, dict) else None

    @property
    def base_location(self) -> str:
        """Where the frozen base lives: ``RUN/base`` (every run written since runs travel whole; older
        runs that kept the original as their base name where it was)."""
        if (self.path / "base").is_dir():
            return str(self.path / "base")
        original = self.meta["original"]
        return original.get("location") or original.get("hub_id") or original["name"]

    def head_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Trained task-head weights by module name (classification runs), empty if none."""
        if not (self.path / HEAD_FILE).is_file():
            return {}
        heads: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in self._tensors(HEAD_FILE, "trained head").items():
            module, _, param = key.rpartition(".")
            heads.setdefault(module, {})[param] = value
        return heads

    def adapters(self, initial: bool = False) -> AdapterSet:
        name = INITIAL_FILE if initial else STATE_FILE
        tensors = self._tensors(name, "adapter state")
        meta = self.meta
        try:
            return AdapterSet.from_tensors(meta["method"], tensors, meta["layers"], meta.get("conv1d", []))
        except ValueError as exc:
            raise SvdadaptError(f"adapter state {self.path / name}: {exc}; {DAMAGED}") from None

    def load_base(self, device: str = "cpu"):
        """The frozen base model and tokenizer, its fingerprint checked against the run's record."""
        from .models import load_model

        loaded = load_model(self.base_location, head=self.meta.get("head", "auto"), device=device)
        if weights_fingerprint(loaded.model) != self.meta["base_fingerprint"]:
            raise SvdadaptError(
                f"the base model at {self.base_location} is not the one this run was built on "
                "(weights fingerprint differs); rebuild the run"
            )
        return loaded

    def load_adapted(
        self, device: str = "cpu", initial: bool = False, adapters: AdapterSet | None = None, head: dict | None = None
    ):
        """The run's model as it computes: the base with the adapter (``initial``: as built; or
        ``adapters``, e.g. one trained elsewhere) injected and any trained task head (``head``, else
        the run's) loaded, in eval mode."""
        from .adapters.inject import inject

        loaded = self.load_base(device=device)
        inject(loaded.model, adapters or self.adapters(initial=initial), dropout=self.meta.get("dropout", 0.0))
        heads = {} if initial else head if head is not None else self.head_state()
        for name, state in heads.items():  # a trained classification head
            try:
                loaded.model.get_submodule(name).load_state_dict(state)
            except (AttributeError, RuntimeError) as exc:
                raise SvdadaptError(f"the task head {name} does not fit this run's model ({exc}); {DAMAGED}") from None
        loaded.model.eval()
        return loaded


def mark_stage(run: Run, stage: str) -> Run:
    """Record ``stage`` in run.json (e.g. "training" while a training runs), nothing else changed."""
    meta = {**run.meta, "stage": stage}
    write_json(run.path / RUN_FILE, meta)
    return Run(run.path, meta)


def update_run(
    run: Run,
    adapters: AdapterSet,
    stage: str = "trained",
    head: dict[str, dict[str, torch.Tensor]] | None = None,
    **meta,
) -> Run:
    """Replace a run's current adapter (after training) — adapter/ and adapter_state — and record
    ``stage`` and ``meta`` in run.json; the base and the initial state stay as built. A trained task
    head goes into head.safetensors and into the PEFT adapter as ``modules_to_save``."""
    if set(adapters.layers) != set(run.meta["layers"]):
        raise SvdadaptError("the adapter's layers differ from the run's; train on the run it came from")
    new_meta = {**run.meta, **meta, "stage": stage, "layers": adapters.describe()}
    with atomic_directory(run.path / "adapter") as tmp:
        write_peft_lora(
            tmp,
            lora_on_base(adapters),
            adapter_base_name(run.meta),
            fan_in_fan_out=bool(adapters.conv1d),
            task_type=run.meta.get("task_type"),
            dropout=run.meta.get("dropout", 0.0),
            modules_to_save=head,
        )
        for name in tokenizer_files(run.path / "adapter"):  # the tokenizer travels with the adapter
            link_or_copy(run.path / "adapter" / name, tmp / name)
    write_safetensors(run.path / STATE_FILE, adapters.tensors())
    written = [STATE_FILE, PEFT_WEIGHTS]
    if head:
        flat = {f"{module}.{k}": v for module, state in head.items() for k, v in state.items()}
        write_safetensors(run.path / HEAD_FILE, flat)
        written.append(HEAD_FILE)
    new_meta["files"] = {**(run.meta.get("files") or {}), **{n: file_record(run.path / n) for n in written}}
    write_json(run.path / RUN_FILE, new_meta)
    return Run(run.path, new_meta)


def write_run_files(
    directory: Path,
    meta: dict,
    adapters: AdapterSet,
    initial: AdapterSet,
    base_model: nn.Module,
    tokenizer,
    base_changed: bool,
    base_fingerprint: str,
) -> dict:
    """Write a run's files into ``directory``, the staging directory of an atomic write of the run,
    whose base/ is already written, with weights ``base_fingerprint`` (``base_changed``: it differs
    from the original). The adapter folder gets the tokenizer too. Returns run.json's content."""
    meta = {
        "format": FORMAT,
        "version": VERSION,
        **meta,
        "base_changed": base_changed,
        "base_fingerprint": base_fingerprint,
        "task_type": task_type_of(base_model),
        "layers": adapters.describe(),
        "conv1d": adapters.conv1d,
    }
    write_peft_lora(
        directory / "adapter",
        lora_on_base(adapters),
        adapter_base_name(meta),
        fan_in_fan_out=bool(adapters.conv1d),
        task_type=meta["task_type"],
        dropout=meta.get("dropout", 0.0),
    )
    tokenizer.save_pretrained(directory / "adapter")
    write_safetensors(directory / STATE_FILE, adapters.tensors())
    write_safetensors(directory / INITIAL_FILE, initial.tensors())
    meta["files"] = {name: file_record(directory / name) for name in (STATE_FILE, INITIAL_FILE, PEFT_WEIGHTS)}
    write_json(directory / RUN_FILE, meta)
    return meta


def mixed_conv1d(adapters: AdapterSet) -> None:
    """PEFT's fan_in_fan_out is one flag per adapter: refuse a mix of Conv1D and Linear targets."""
    if adapters.conv1d and len(adapters.conv1d) != len(adapters.layers):
        raise SvdadaptError("targets mix Conv1D and nn.Linear layers; PEFT cannot save that as one LoRA")


BASE_NOTE = (
    "the base folder beside this adapter (RUN/base): load it with from_pretrained and pass the model and this "
    "folder to peft.PeftModel.from_pretrained"
)  # what an adapter names as its base where no hub id can: never a path of the machine that wrote it


def adapter_base_name(meta: dict) -> str:
    """What a run's PEFT adapter names as its base: the original's hub id where the base is the
    original as the hub has it, else :data:`BASE_NOTE` (stock PEFT's one-argument loaders then fail
    with that text instead of loading whatever a relative path names from where they run)."""
    original = meta.get("original") or {}
    return original.get("hub_id") if not meta.get("base_changed", True) and original.get("hub_id") else BASE_NOTE


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja")  # fmt: skip


def tokenizer_files(directory: Path) -> list[str]:
    """The tokenizer's files in ``directory``."""
    return [name for name in TOKENIZER_FILES if (directory / name).is_file()]


def copy_run(run: Run, out: Path, overwrite: bool = False) -> Run:
    """A copy of ``run`` at ``out`` (without its checkpoints and evaluations) to train on while the
    original stays as it is; files are hard-linked where the file system allows."""
    check_run_out(out, overwrite)
    skip = shutil.ignore_patterns("checkpoints", "eval")
    with atomic_directory(out) as tmp:
        shutil.copytree(run.path, tmp, ignore=skip, copy_function=link_or_copy, dirs_exist_ok=True)
    return Run.open(out)
