"""A run as an in-memory ``peft.PeftModel``, for the trainers people use (``transformers.Trainer``,
TRL's ``SFTTrainer``): the run's base with its adapter as standard PEFT LoRA layers, trainable as
any PEFT model, and the adapter such a trainer saves brought back into svdadapt (``--adapter DIR``).

- Rows without ΔΣ: ``PeftModel.from_pretrained(RUN/base, RUN/adapter, is_trainable=True)``; a row
  that keeps A frozen (``freeze_a``) has ``lora_A`` frozen.
- KaSA rows: PEFT's KaSA variant (``LoraConfig(kasa_config=...)``) whose ``lora_diag`` is the run's
  ΔΣ. PEFT's variant truncates the base by SVD when it initialises; the run's base is truncated
  already (by its own row: plain or context), so the layers are made on the meta device, where
  PEFT defers that truncation, the run's A, B and ΔΣ are loaded, and the deferral is dropped: the
  base stays RUN/base exactly.
- The row's loss (KaSA's regularizers, or any row's registered loss) is added to the model's output
  ``loss`` whenever it trains, by a forward hook: a trainer that uses the model's loss (Trainer,
  SFTTrainer) trains with it, nothing to add by hand. :data:`LOSS_HOOK` names the hook.

An adapter saved from this model (``save_pretrained``, ``trainer.save_model``) loads back with
:func:`adapter_from_peft` (``merge``/``export``/``eval --adapter DIR``); KaSA's ΔΣ comes back as
ΔΣ. Stock PEFT cannot load a KaSA adapter onto RUN/base by itself (it would truncate it again):
bring it back through svdadapt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .adapters.losses import LOSSES
from .adapters.peft_format import CONFIG_FILE, PREFIX, WEIGHTS_FILE
from .adapters.state import AdapterSet
from .errors import SvdadaptError
from .files import load_tensors, read_json
from .methods import Method
from .options import opt
from .runs import Run

LOSS_HOOK = "svdadapt_loss_hook"  # the attribute holding the hook's handle on the PeftModel


@dataclass
class LayerView:
    """A PEFT LoRA layer's factors for one adapter, as the registered losses read them."""

    lora_A: nn.Linear
    lora_B: nn.Linear
    lora_diag: nn.Parameter | None


def peft_layers(model: nn.Module, adapter: str = "default") -> list[LayerView]:
    """The trainable LoRA layers of a PEFT model."""
    from peft.tuners.lora import LoraLayer

    views = []
    for module in model.modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            diag = module.lora_diag[adapter] if adapter in getattr(module, "lora_diag", {}) else None
            views.append(LayerView(module.lora_A[adapter], module.lora_B[adapter], diag))
    return [v for v in views if v.lora_B.weight.requires_grad]


def peft_model(run: Run | str | Path, device: str = "cpu", trainable: bool = True, **train_params):
    """The run as a ``peft.PeftModel`` on its base (see the module docstring); ``train_params``: the
    row's train parameters (KaSA's ``beta``, ``gamma``), else its defaults."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.utils import set_peft_model_state_dict

    run = run if isinstance(run, Run) else Run.open(run)
    run.require_settled("loading it for training")
    row = run.method.configured(**train_params)
    loaded = run.load_base(device=device)
    adapters = run.adapters()
    if not row.diag:
        model = PeftModel.from_pretrained(loaded.model, str(run.path / "adapter"), is_trainable=trainable)
    else:
        from peft.tuners.lora.config import KasaConfig

        if run.meta.get("conv1d"):
            raise SvdadaptError(f"{run.path}: PEFT's KaSA takes nn.Linear layers only; train this run with svdadapt")
        if run.quantization is not None:
            raise SvdadaptError(
                f"{run.path}: PEFT's KaSA variant cannot wrap a quantized base (it would truncate it again); "
                "train this run with svdadapt train"
            )
        config = LoraConfig.from_pretrained(str(run.path / "adapter"))
        config.inference_mode = not trainable
        values = row.stage_values("train")
        config.kasa_config = KasaConfig(beta=values.get("beta", 0.0), gamma=values.get("gamma", 0.0))
        model = get_peft_model(loaded.model, config, low_cpu_mem_usage=True)  # KaSA's truncation deferred
        set_peft_model_state_dict(model, _peft_state(adapters), low_cpu_mem_usage=True)
        for module in model.modules():  # the base is RUN/base, truncated already: keep it
            if getattr(module, "_lora_kasa_truncation_deferred", None):
                module._lora_kasa_truncation_deferred.clear()
        model.to(device)
    if row.freeze_a:
        for view in peft_layers(model):
            view.lora_A.weight.requires_grad_(False)
    if row.loss and trainable:
        _add_loss_hook(model, row)
    model.train(trainable)
    return model


def _peft_state(adapters: AdapterSet) -> dict[str, torch.Tensor]:
    """The run's adapter as PEFT's KaSA state: A, B and ΔΣ per layer."""
    state = {}
    for name, layer in adapters.layers.items():
        state[f"{PREFIX}{name}.lora_A.weight"] = layer.A
        state[f"{PREFIX}{name}.lora_B.weight"] = layer.B
        if layer.diag is not None:
            state[f"{PREFIX}{name}.lora_diag"] = layer.diag
    return state


def _add_loss_hook(model: nn.Module, row: Method) -> None:
    """While the model trains, its output's ``loss`` includes the row's loss terms."""
    regularizer = LOSSES[row.loss].regularizer(row.stage_values("train"))
    if regularizer is None:  # every weight zero: nothing to add
        return

    def hook(module, args, output):
        if module.training and getattr(output, "loss", None) is not None:
            extra, _terms = regularizer.over(peft_layers(module))
            output.loss = output.loss + extra
        return output

    setattr(model, LOSS_HOOK, model.register_forward_hook(hook))


def adapter_from_peft(run: Run, directory: str | Path) -> tuple[AdapterSet, dict[str, dict[str, torch.Tensor]]]:
    """The run's adapter with the factors of a PEFT LoRA in ``directory`` (trained elsewhere from
    RUN/adapter or from :func:`peft_model`): A and B as trained, ΔΣ as trained where the adapter has
    it (a KaSA run's adapter without it has ΔΣ folded into B: ΔΣ = 1), the base change as built; and
    the task head it saved (``modules_to_save``), else the run's. One line for an adapter of other
    layers, ranks or scaling, or one that is not LoRA."""
    directory = Path(directory).expanduser()
    fix = "pass the folder a trainer saved from this run's adapter"
    if not (directory / CONFIG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise SvdadaptError(f"--adapter {directory} is not a PEFT adapter ({CONFIG_FILE} and {WEIGHTS_FILE}); {fix}")
    config = read_json(directory / CONFIG_FILE, "PEFT adapter config", fix)
    if config.get("peft_type") != "LORA" or config.get("use_dora") or config.get("use_rslora"):
        raise SvdadaptError(f"--adapter {directory} is not a plain LoRA adapter (DoRA and rsLoRA are not runs'); {fix}")
    tensors = {
        k.replace(".default.", "."): v for k, v in load_tensors(directory / WEIGHTS_FILE, "adapter", fix).items()
    }
    adapters = run.adapters()
    for name, layer in adapters.layers.items():
        A, B = tensors.get(f"{PREFIX}{name}.lora_A.weight"), tensors.get(f"{PREFIX}{name}.lora_B.weight")
        if A is None or B is None or A.shape != layer.A.shape or B.shape != layer.B.shape:
            raise SvdadaptError(f"--adapter {directory} has no LoRA of this run's shape for {name}; {fix}")
        alpha = config.get("alpha_pattern", {}).get(name, config.get("lora_alpha"))
        if not isinstance(alpha, (int, float)) or not math.isclose(alpha / A.shape[0], layer.scaling, rel_tol=1e-6):
            raise SvdadaptError(f"--adapter {directory} scales {name} by {alpha}/{A.shape[0]}, not as the run; {fix}")
        diag = tensors.get(f"{PREFIX}{name}.lora_diag")
        if diag is not None and layer.diag is None:
            raise SvdadaptError(f"--adapter {directory} has a ΔΣ vector, and this run's method has none; {fix}")
        layer.A, layer.B = A.to(layer.A.dtype), B.to(layer.B.dtype)
        if layer.diag is not None:
            layer.diag = diag.to(layer.diag.dtype) if diag is not None else torch.ones_like(layer.diag)  # folded
    extra = {k for k in tensors if ".lora_A." in k or ".lora_B." in k} - {
        f"{PREFIX}{n}.lora_{x}.weight" for n in adapters.layers for x in "AB"
    }
    if extra:
        raise SvdadaptError(f"--adapter {directory} adapts layers this run does not, e.g. {min(extra)}; {fix}")
    head: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():  # modules_to_save, as PEFT saves them: PREFIX + module + "." + param
        if key.startswith(PREFIX) and ".lora_" not in key:
            module, _, param = key[len(PREFIX) :].rpartition(".")
            head.setdefault(module, {})[param] = value
    return adapters, head or run.head_state()


def adapter_option() -> str | None:
    """The ``--adapter DIR`` option of the commands that use a run's adapter (merge, export, eval)."""
    return opt(
        None, "a PEFT adapter trained elsewhere from RUN/adapter or svdadapt.peft_model (TRL, Trainer, LLaMA-Factory, "
        "axolotl): use it in place of the run's own", metavar="DIR",
    )  # fmt: skip


def chosen_adapter(run: Run, directory: str | None, doing: str) -> tuple[AdapterSet | None, dict | None]:
    """What a command uses of ``run``: the adapter in ``directory`` (and its head) when given, else
    (None, None) for the run's own, which must be settled (not mid-training) for ``doing``."""
    if directory is None:
        run.require_settled(doing)
        return None, None
    return adapter_from_peft(run, directory)
