"""Building adapters: per-layer plans, statistics waves, decomposition + initialisation (the command
is svdadapt.commands.build)."""

from .core import build_adapters
from .plan import LayerPlan, plan_layers
from .waves import Unit, waves_from_store, waves_on_the_fly, waves_without_statistics

__all__ = [
    "LayerPlan",
    "Unit",
    "build_adapters",
    "plan_layers",
    "waves_from_store",
    "waves_on_the_fly",
    "waves_without_statistics",
]
