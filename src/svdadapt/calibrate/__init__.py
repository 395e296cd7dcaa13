"""Covariance calibration: hooks on target layers, whole-model or block-wise streaming drivers."""

from ..store import FinishedGroup
from .accumulator import GramAccumulator
from .capture import InputCapture
from .engine import DTYPES, MODES, accumulate_dtype_option, collect_covariances, iter_covariances
from .settings import PassSettings

__all__ = [
    "DTYPES",
    "MODES",
    "FinishedGroup",
    "GramAccumulator",
    "InputCapture",
    "PassSettings",
    "accumulate_dtype_option",
    "collect_covariances",
    "iter_covariances",
]
