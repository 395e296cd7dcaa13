"""The adapter methods, as one table. A method is a row, not a branch:

| method    | decomposition of W | seeds the adapter / is dropped | frozen base        | adapter init           |
|-----------|--------------------|--------------------------------|--------------------|------------------------|
| lora      | none               | –                              | W                  | A Kaiming, B = 0       |
| pissa     | plain SVD          | top-r                          | W − s·B·A          | A = √S Vᵀ, B = U √S    |
| milora    | plain SVD          | bottom-r                       | W − s·B·A          | A = √S Vᵀ, B = U √S    |
| corda-ipa | context SVD of W·C | top-r                          | W − s·B·A          | A = √S Vᵀ, B = U √S    |
| corda-kpa | context SVD of W·C | bottom-r                       | W − s·B·A          | A = √S Vᵀ, B = U √S    |
| kasa      | plain SVD*         | bottom-r dropped               | W − U_r S_r V_rᵀ   | A Kaiming, B = 0, ΔΣ   |

(* ``--truncation context`` decomposes W·C instead.) s = α/r is the LoRA scaling.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .errors import SvdadaptError


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    decomposition: str | None  # key of decompose.DECOMPOSITIONS; None: W is not decomposed
    components: str | None  # "top" or "bottom": which r components the method takes
    base: str  # "original", "residual" (W − s·B·A) or "truncated" (W minus the taken components)
    init: str  # "svd": adapter seeded with the taken components; "lora": A Kaiming, B = 0
    diag: bool = False  # a trainable singular-value vector ΔΣ between A and B (KaSA)
    loss: str | None = None  # an extra training loss term (KaSA's regularizers)

    @property
    def needs(self) -> str | None:
        """The calibration statistic this method's decomposition needs, if any."""
        from .decompose import DECOMPOSITIONS

        return DECOMPOSITIONS[self.decomposition].needs if self.decomposition else None


_ROWS = (
    # name        decomposition  components  base         init   summary
    ("lora",      None,          None,       "original",  "lora", "LoRA: A Kaiming, B = 0, on the untouched weight"),
    ("pissa",     "plain",       "top",      "residual",  "svd",  "PiSSA: adapter from the top-r SVD components"),
    ("milora",    "plain",       "bottom",   "residual",  "svd",  "MiLoRA: adapter from the bottom-r SVD components"),
    ("corda-ipa", "context",     "top",      "residual",  "svd",  "CorDA instruction-previewed: top-r of W·C"),
    ("corda-kpa", "context",     "bottom",   "residual",  "svd",  "CorDA knowledge-preserved: bottom-r of W·C"),
    ("kasa",      "plain",       "bottom",   "truncated", "lora", "KaSA: drop the bottom-r SVD components, train BΔΣA"),
)  # fmt: skip
_EXTRAS = {"kasa": {"diag": True, "loss": "kasa"}}
METHODS: dict[str, Method] = {
    name: Method(name, summary, decomposition, components, base, init, **_EXTRAS.get(name, {}))
    for name, decomposition, components, base, init, summary in _ROWS
}

TRUNCATIONS = ("plain", "context")  # KaSA's --truncation choices


def get_method(name: str, truncation: str | None = None) -> Method:
    """The table row for ``name``; ``truncation`` swaps KaSA's decomposition (plain/context)."""
    if name not in METHODS:
        raise SvdadaptError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    method = METHODS[name]
    if truncation is not None and truncation != method.decomposition:
        if method.base != "truncated":
            raise SvdadaptError(f"--truncation applies to kasa only, not to {name}")
        if truncation not in TRUNCATIONS:
            raise SvdadaptError(f"unknown truncation {truncation!r}; choose one of {', '.join(TRUNCATIONS)}")
        method = replace(method, decomposition=truncation)
    return method
