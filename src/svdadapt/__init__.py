"""svdadapt: knowledge-aware, SVD-based parameter-efficient fine-tuning of transformers models.

The library twin of PEFT's CorDA and KaSA initialisations, end to end: calibrate input covariances,
decompose, build adapters, train, merge/export, evaluate and compress.
"""

from .backend import collection_paused

with collection_paused():  # torch and transformers: ~1M long-lived objects, no garbage
    from .calibrate import collect_covariances, iter_covariances
    from .errors import SvdadaptError
    from .store import CovarianceStore
    from .targets import find_targets

__version__ = "0.1.0"

__all__ = ["CovarianceStore", "SvdadaptError", "collect_covariances", "find_targets", "iter_covariances"]
