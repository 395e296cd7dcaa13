"""The adapter methods, as one table. A method is a row, not a branch:

| method    | decomposition of W | takes    | frozen base        | init  | adapter                   | loss |
|-----------|--------------------|----------|--------------------|-------|---------------------------|------|
| lora      | none               | –        | W                  | lora  | A Kaiming, B = 0          | –    |
| pissa     | plain SVD          | top-r    | W − s·B·A          | svd   | A = √S Vᵀ, B = U √S       | –    |
| milora    | plain SVD          | bottom-r | W − s·B·A          | svd   | A = √S Vᵀ, B = U √S       | –    |
| corda-ipa | context SVD of W·C | top-r    | W − s·B·A          | svd   | A = √S Vᵀ, B = U √S       | –    |
| corda-kpa | context SVD of W·C | bottom-r | W − s·B·A          | svd   | A = √S Vᵀ, B = U √S       | –    |
| kasa      | plain SVD*         | bottom-r | W − U_r S_r V_rᵀ   | lora  | A Kaiming, B = 0, ΔΣ      | kasa |
| kasa-context | context SVD of W·C | bottom-r | W − U_r S_r V_rᵀ | lora | A Kaiming, B = 0, ΔΣ     | kasa |
| eva       | PCA of the inputs† | top-r    | W                  | eva   | A = top-r Vᵀ of Σ, B = 0  | –    |
| lora-null | W·N·Nᵀ‡            | top-r    | W − s·B·A          | svd   | A = √S Vᵀ, B = U √S       | –    |

(* ``--truncation context`` decomposes W·C instead.) s = α/r is the LoRA scaling.
(† Σ = C − μμᵀ, the inputs' covariance about their mean, as PEFT's EVA; ranks redistributed across
layers by explained variance up to ρ·r each, ``--rho``.) (‡ N: the r smallest eigenvectors of C,
the inputs' null space, as many as the rank, as LoRA-Null's reference code; all of W·N·Nᵀ is taken.)
``--freeze-a`` keeps A fixed in training (LoRA-Null's second variant) on rows whose init seeds A.

Every field names something registered: ``decomposition`` a row of
:data:`svdadapt.decompose.DECOMPOSITIONS`, ``init`` one of :data:`svdadapt.adapters.init.INITS`,
``loss`` one of :data:`svdadapt.adapters.losses.LOSSES`, ``ranks`` one of
:data:`svdadapt.ranks.RANK_ALLOCATIONS`; a row naming anything else, or an
inconsistent one, cannot be made. Adding a method is adding a row (and, for new maths, registering
one function under a new name in one of those tables).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .adapters.init import INITS, Base
from .adapters.losses import LOSSES
from .decompose import DECOMPOSITIONS, Take
from .errors import SvdadaptError
from .ranks import RANK_ALLOCATIONS

__all__ = ["METHODS", "TABLE", "TRUNCATIONS", "Base", "Method", "Take", "get_method"]


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    init: str  # key of INITS: how the adapter is seeded
    decomposition: str | None = None  # key of DECOMPOSITIONS; None: W is not decomposed
    take: Take | None = None  # which r components the method takes
    base: Base = Base.ORIGINAL
    diag: bool = False  # a trainable singular-value vector ΔΣ between A and B (KaSA)
    loss: str | None = None  # key of LOSSES: a training loss term added to the task's
    ranks: str | None = None  # key of RANK_ALLOCATIONS: ranks spread across layers before init
    rho: float | None = None  # with ranks: a layer may hold up to round(ρ·r) components
    freeze_a: bool = False  # A stays as initialised during training (rows whose init seeds A)

    def __post_init__(self) -> None:
        problem = self._inconsistency()
        if problem:
            raise ValueError(f"method {self.name!r}: {problem}")

    def _inconsistency(self) -> str | None:
        if self.init not in INITS:
            return f"init {self.init!r} is not one of {', '.join(INITS)}"
        if self.decomposition is not None and self.decomposition not in DECOMPOSITIONS:
            return f"decomposition {self.decomposition!r} is not one of {', '.join(DECOMPOSITIONS)}"
        if self.loss is not None and self.loss not in LOSSES:
            return f"loss {self.loss!r} is not one of {', '.join(LOSSES)}"
        if not isinstance(self.base, Base) or not (self.take is None or isinstance(self.take, Take)):
            return "base must be a Base and take a Take (or None)"
        if (self.decomposition is None) != (self.take is None):
            return "a decomposition and the components it takes go together"
        if self.base not in INITS[self.init].bases:
            return f"init {self.init} cannot leave a {self.base.value} base"
        if self.base is Base.TRUNCATED and self.take is None:
            return "a truncated base needs the components it drops"
        if self.loss is not None and LOSSES[self.loss].needs_diag and not self.diag:
            return f"loss {self.loss} needs a ΔΣ vector (diag=True)"
        if self.ranks is not None and self.ranks not in RANK_ALLOCATIONS:
            return f"ranks {self.ranks!r} is not one of {', '.join(RANK_ALLOCATIONS)}"
        if (self.ranks is None) != (self.rho is None) or (self.ranks is not None and self.take is None):
            return "a rank allocation, its ρ and the components it compares go together"
        if self.freeze_a and not INITS[self.init].seeded_A:
            return f"init {self.init} does not seed A: nothing to freeze"
        return None

    @property
    def needs(self) -> str | None:
        """The calibration statistic this method's decomposition needs, if any."""
        return DECOMPOSITIONS[self.decomposition].needs if self.decomposition else None

    @property
    def changes_base(self) -> bool:
        """Whether building writes a new frozen base (else the original model serves as the base)."""
        return self.base is not Base.ORIGINAL

    @property
    def original_at_init(self) -> bool:
        """Whether the adapted model at init is the original model itself (the untouched weight and
        an adapter that adds nothing), so that evaluating it again shows nothing new."""
        return self.base is Base.ORIGINAL


TABLE = (
    Method("lora", "LoRA: A Kaiming, B = 0, on the untouched weight", "lora"),
    Method("pissa", "PiSSA: adapter from the top-r SVD components", "svd", "plain", Take.TOP, Base.RESIDUAL),
    Method("milora", "MiLoRA: adapter from the bottom-r SVD components", "svd", "plain", Take.BOTTOM, Base.RESIDUAL),
    Method("corda-ipa", "CorDA instruction-previewed: top-r of W·C", "svd", "context", Take.TOP, Base.RESIDUAL),
    Method("corda-kpa", "CorDA knowledge-preserved: bottom-r of W·C", "svd", "context", Take.BOTTOM, Base.RESIDUAL),
    Method(
        "kasa", "KaSA: drop the bottom-r SVD components, train BΔΣA", "lora", "plain", Take.BOTTOM, Base.TRUNCATED,
        diag=True, loss="kasa",
    ),
    Method(
        "kasa-context", "KaSA truncating by the context decomposition: drop the bottom-r of W·C, train BΔΣA", "lora",
        "context", Take.BOTTOM, Base.TRUNCATED, diag=True, loss="kasa",
    ),
    Method(
        "eva", "EVA: A from the inputs' top principal directions, B = 0, ranks by explained variance", "eva",
        "inputs", Take.TOP, ranks="explained-variance", rho=2.0,
    ),
    Method("lora-null", "LoRA-Null: adapter from W on the inputs' null space", "svd", "null", Take.TOP, Base.RESIDUAL),
)  # fmt: skip
METHODS: dict[str, Method] = {method.name: method for method in TABLE}

TRUNCATIONS = ("plain", "context")  # KaSA's --truncation choices


def get_method(name: str, truncation: str | None = None, rho: float | None = None, freeze_a: bool = False) -> Method:
    """The table row for ``name``; ``truncation`` swaps a truncating row's decomposition (plain/context),
    ``rho`` sets a rank-allocating row's ρ, ``freeze_a`` keeps a seeded A fixed in training."""
    if name not in METHODS:
        raise SvdadaptError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    method = METHODS[name]
    if rho is not None:
        if method.ranks is None:
            allocating = ", ".join(m.name for m in TABLE if m.ranks)
            raise SvdadaptError(f"--rho applies to methods that redistribute ranks ({allocating}), not to {name}")
        if not (rho >= 1 and math.isfinite(rho)):
            raise SvdadaptError(f"--rho must be a finite number of at least 1 (1 keeps every layer's rank; PEFT uses "
                                f"2), got {rho}")  # fmt: skip
        method = replace(method, rho=float(rho))
    if freeze_a:
        if not INITS[method.init].seeded_A:
            seeded = ", ".join(m.name for m in TABLE if INITS[m.init].seeded_A)
            raise SvdadaptError(
                f"--freeze-a freezes an A seeded from the weights or data ({seeded}); {name}'s A is random: drop it"
            )
        method = replace(method, freeze_a=True)
    if truncation is not None:
        if method.base is not Base.TRUNCATED:
            raise SvdadaptError(f"--truncation applies to methods that truncate the base (kasa), not to {name}")
        if truncation not in TRUNCATIONS:
            raise SvdadaptError(f"unknown truncation {truncation!r}; choose one of {', '.join(TRUNCATIONS)}")
        method = replace(method, decomposition=truncation)
    return method
