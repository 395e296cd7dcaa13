"""Option names users of PEFT, TRL, LLaMA-Factory and axolotl type, for svdadapt's own: a recipe key,
a ``--config`` key or a (hidden) flag ``--learning-rate`` means ``--module-lr`` wherever that option
exists; elsewhere it stays unknown (and "did you mean" names the option it might be)."""

from __future__ import annotations

from typing import Any

ALIASES = {
    "learning_rate": "module_lr",
    "lora_r": "rank",
    "lora_rank": "rank",
    "r": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "target_modules": "targets",
    "max_seq_length": "max_length",
    "cutoff_len": "max_length",
}


def aliases_of(names: set[str]) -> dict[str, str]:
    """{alias: option} for the options in ``names`` (a command's keys) that have aliases."""
    return {alias: name for alias, name in ALIASES.items() if name in names and alias not in names}


def renamed(values: dict[str, Any], names: set[str]) -> tuple[dict[str, Any], list[str]]:
    """``values`` with the aliases of ``names`` renamed to the options they mean, and a problem for
    each option given twice (under two of its names)."""
    known = aliases_of(names)
    out: dict[str, Any] = {}
    problems, given_as = [], {}
    for key, value in values.items():
        name = known.get(key, key)
        if name in out:
            problems.append(f"{given_as[name]!r} and {key!r} both set {name!r}; give one")
            continue
        out[name], given_as[name] = value, key
    return out, problems
