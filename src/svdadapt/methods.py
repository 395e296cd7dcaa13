"""The adapter methods, as one table. A method is a row, not a branch:

| method    | decomposition of W | takes    | frozen base        | init  | adapter                   | loss |
|-----------|--------------------|----------|--------------------|-------|---------------------------|------|
| lora      | none               | –        | W                  | lora  | A Kaiming, B = 0          | –    |
| pissa     | plain SVD          | top-r    | W − s·B·A          | svd   | A = √S Vᵀ, B = U √S       | –    |
| milora    | plain SVD          | bottom-r | W − s·B·A          | svd   | A = √S Vᵀ, B = U √S       | –    |
| corda-ipa | context SVD of W·C | top-r    | W − s·B·A          | svd   | A = √S Vᵀ, B = U √S       | –    |
| corda-kpa | context SVD of W·C | bottom-r | W − s·B·A          | svd   | A = √S Vᵀ, B = U √S       | –    |
| kasa      | plain SVD*         | bottom-r | W − U_r S_r V_rᵀ   | lora  | A Kaiming, B = 0, ΔΣ      | kasa |

(* ``--truncation context`` decomposes W·C instead.) s = α/r is the LoRA scaling.

Every field names something registered: ``decomposition`` a row of
:data:`svdadapt.decompose.DECOMPOSITIONS`, ``init`` one of :data:`svdadapt.adapters.init.INITS`,
``loss`` one of :data:`svdadapt.adapters.losses.LOSSES`; a row naming anything else, or an
inconsistent one, cannot be made. Adding a method is adding a row (and, for new maths, registering
one function under a new name in one of those tables).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .adapters.init import INITS, Base
from .adapters.losses import LOSSES
from .decompose import DECOMPOSITIONS, Take
from .errors import SvdadaptError

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
)  # fmt: skip
METHODS: dict[str, Method] = {method.name: method for method in TABLE}

TRUNCATIONS = ("plain", "context")  # KaSA's --truncation choices


def get_method(name: str, truncation: str | None = None) -> Method:
    """The table row for ``name``; ``truncation`` swaps a truncating row's decomposition (plain/context)."""
    if name not in METHODS:
        raise SvdadaptError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    method = METHODS[name]
    if truncation is not None and truncation != method.decomposition:
        if method.base is not Base.TRUNCATED:
            raise SvdadaptError(f"--truncation applies to methods that truncate the base (kasa), not to {name}")
        if truncation not in TRUNCATIONS:
            raise SvdadaptError(f"unknown truncation {truncation!r}; choose one of {', '.join(TRUNCATIONS)}")
        method = replace(method, decomposition=truncation)
    return method
