"""The adapter methods, as one table. A method is a row, not a branch:

| method       | decomposition of W | takes    | frozen base      | init | ΔΣ | loss | own parameters          |
|--------------|--------------------|----------|------------------|------|----|------|-------------------------|
| lora         | none               | –        | W                | lora | –  | –    | –                       |
| pissa        | plain SVD          | top-r    | W − s·B·A        | svd  | –  | –    | freeze_a                |
| milora       | plain SVD          | bottom-r | W − s·B·A        | svd  | –  | –    | freeze_a                |
| corda-ipa    | context SVD of W·C | top-r    | W − s·B·A        | svd  | –  | –    | freeze_a                |
| corda-kpa    | context SVD of W·C | bottom-r | W − s·B·A        | svd  | –  | –    | freeze_a                |
| kasa         | plain SVD*         | bottom-r | W − U_r S_r V_rᵀ | lora | ✓  | kasa | truncation, beta, gamma |
| kasa-context | context SVD of W·C | bottom-r | W − U_r S_r V_rᵀ | lora | ✓  | kasa | truncation, beta, gamma |
| eva          | PCA of the inputs† | top-r    | W                | eva  | –  | –    | rho, freeze_a           |
| lora-null    | W·N·Nᵀ‡            | top-r    | W − s·B·A        | svd  | –  | –    | freeze_a                |
| cloq         | none (C for init)§ | –        | Q(W)             | cloq | –  | –    | –                       |

Inits: ``lora`` A Kaiming, B = 0 (and ΔΣ ~ N(0, 1)); ``svd`` A = √S Vᵀ, B = U √S; ``eva`` A = top-r Vᵀ
of Σ, B = 0.
(* its ``truncation`` parameter picks the decomposition; kasa-context is the same row with
``truncation: context``, a named variant.) s = α/r is the LoRA scaling. († Σ = C − μμᵀ, the inputs'
covariance about their mean, as PEFT's EVA; ranks redistributed across layers by explained variance
up to ρ·r each.) (‡ N: the r smallest eigenvectors of C, the inputs' null space, as many as the rank,
as LoRA-Null's reference code; all of W·N·Nᵀ is taken.) (§ CLoQ, arXiv 2501.18475: on the quantized
base Q(W), A and B are the closed-form minimiser of ‖(W − Q − s·B·A)·X‖ given C = XᵀX/n; the row
builds only with ``--quantize``, its init is ``quantized_init``, applied by the quantization step.)

Any row builds on a quantized base with ``--quantize`` (a build option, not a row): the base is
the row's frozen base quantized (plain), or LoftQ-style refined from the row's factors
(``--quant-iters``); see :mod:`svdadapt.build.quantized`.

**A row owns its parameters** (:class:`Param`): each declares its name (its ``--flag`` and YAML key),
type, default, check and help, and when it is read — ``build`` (it shapes the run: recorded in
run.json by :meth:`Method.record`, read back by :meth:`Method.from_record`) or ``train`` (a loss
weight: recorded with the training). The commands' flags, recipes' keys, run.json and the API all
come from these declarations (:mod:`svdadapt.method_options`); a row is configured with
:meth:`Method.configured`.

Every field names something registered: ``decomposition`` a row of
:data:`svdadapt.decompose.DECOMPOSITIONS`, ``init`` one of :data:`svdadapt.adapters.init.INITS`,
``loss`` one of :data:`svdadapt.adapters.losses.LOSSES`, ``ranks`` one of
:data:`svdadapt.ranks.RANK_ALLOCATIONS`; a row naming anything else, or an inconsistent one (a ΔΣ
no init draws, a loss without what it reads or the parameters that weigh it), cannot be made.
Adding a method is adding a row (:func:`register_method`; for new maths, one function registered
under a new name in one of those tables).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from .adapters.init import INITS, Base
from .adapters.losses import LOSSES
from .decompose import DECOMPOSITIONS, Take
from .errors import SvdadaptError, unknown
from .options import NON_NEGATIVE, Check
from .ranks import RANK_ALLOCATIONS

__all__ = ["METHODS", "TABLE", "Base", "Method", "Param", "Take", "get_method", "register_method"]

STAGES = ("build", "train")
QUANTIZED_INITS = {None: None, "cloq": "covariance"}  # a quantized init → the statistic it reads


@dataclass(frozen=True)
class Param:
    """A parameter of a method row: one declaration gives its flag ``--NAME`` (underscores as dashes),
    its YAML key, help, check and how it is recorded. ``stage``: ``build`` (shapes the run, recorded
    in run.json) or ``train`` (read by the training, e.g. a loss weight). ``sets``: the row's field
    it chooses, if any (KaSA's truncation chooses the decomposition)."""

    name: str
    type: type  # bool, int, float or str
    default: Any
    help: str
    check: Check | None = None
    choices: tuple[str, ...] | None = None
    stage: str = "build"
    sets: str | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is no value of this parameter, or None."""
        kind = self.type
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            return f"must be {kind.__name__}, got {value!r}"
        if kind is float and not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {value!r}"
        if self.check is not None and not self.check.test(value):
            return f"{self.check.requirement}, got {value!r}"
        return None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


FINITE_AT_LEAST_1 = Check(lambda v: v >= 1, "must be at least 1 (1 keeps every layer's rank; PEFT uses 2)")

TRUNCATION = Param(
    "truncation", str, "plain", "the decomposition whose bottom-r components are dropped from the base",
    choices=("plain", "context"), sets="decomposition",
)  # fmt: skip
BETA = Param("beta", float, 1e-4, "weight of the singular-value term ‖ΔΣ‖²", NON_NEGATIVE, stage="train")
GAMMA = Param("gamma", float, 1e-3, "weight of the orthogonality term ‖BᵀB − I‖ + ‖AAᵀ − I‖", NON_NEGATIVE,
              stage="train")  # fmt: skip
RHO = Param(
    "rho", float, 2.0, "a layer's rank may grow to round(rho·r) as ranks move to where the inputs' variance is; "
    "1 keeps every rank", FINITE_AT_LEAST_1,
)  # fmt: skip
L2_INIT = Param(
    "l2_init", float, 0.0, "weight λ of the L2 penalty on the weight change from init, λ·Σ‖BA‖² (0: off)",
    NON_NEGATIVE, stage="train",
)  # fmt: skip
FREEZE_A = Param("freeze_a", bool, False, "keep A as initialised while training (LoRA-Null's variant)")


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
    ranks: str | None = None  # key of RANK_ALLOCATIONS: ranks spread across layers (by its ρ) before init
    params: tuple[Param, ...] = ()  # the row's own parameters
    quantized_init: str | None = None  # "cloq": the init is the quantization step's (needs --quantize and C)
    values: dict[str, Any] = field(default_factory=dict, hash=False)  # the row's values where not the default

    def __post_init__(self) -> None:
        problem = self._inconsistency()
        if problem:
            raise ValueError(f"method {self.name!r}: {problem}")

    def _inconsistency(self) -> str | None:
        if self.init not in INITS:
            return f"init {self.init!r} is not one of {', '.join(INITS)}"
        init = INITS[self.init]
        if self.decomposition is not None and self.decomposition not in DECOMPOSITIONS:
            return f"decomposition {self.decomposition!r} is not one of {', '.join(DECOMPOSITIONS)}"
        if self.loss is not None and self.loss not in LOSSES:
            return f"loss {self.loss!r} is not one of {', '.join(LOSSES)}"
        if not isinstance(self.base, Base) or not (self.take is None or isinstance(self.take, Take)):
            return "base must be a Base and take a Take (or None)"
        if (self.decomposition is None) != (self.take is None):
            return "a decomposition and the components it takes go together"
        if self.base not in init.bases:
            return f"init {self.init} cannot leave a {self.base.value} base"
        if self.base is Base.TRUNCATED and self.take is None:
            return "a truncated base needs the components it drops"
        if self.diag and not init.draws_diag:
            return f"init {self.init} draws no ΔΣ vector (diag=True needs an init that draws it)"
        if self.loss is not None:
            loss = LOSSES[self.loss]
            if loss.needs_diag and not self.diag:
                return f"loss {self.loss} needs a ΔΣ vector (diag=True)"
            train = {p.name for p in self.params if p.stage == "train"}
            if not set(loss.weights.values()) <= train:
                return f"loss {self.loss} is weighted by {', '.join(loss.weights.values())}: declare them as the " \
                       "row's train parameters"  # fmt: skip
        if self.quantized_init not in QUANTIZED_INITS:
            return f"quantized_init {self.quantized_init!r} is not one of {', '.join(map(str, QUANTIZED_INITS))}"
        if self.quantized_init is not None and (self.base is not Base.ORIGINAL or self.diag):
            return "a quantized init replaces the adapter on Q(W): its row leaves the original base, without ΔΣ"
        if self.ranks is not None and (self.ranks not in RANK_ALLOCATIONS or self.take is None):
            return f"ranks {self.ranks!r} must be one of {', '.join(RANK_ALLOCATIONS)}, with components to compare"
        return self._params_inconsistency(init)

    def _params_inconsistency(self, init) -> str | None:
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            return "a parameter is declared twice"
        declared = {p.name: p for p in self.params}
        for p in self.params:
            if p.stage not in STAGES or (p.sets is not None and p.sets not in Method.__dataclass_fields__):
                return f"parameter {p.name}: stage must be one of {', '.join(STAGES)} and sets a field of the row"
        if set(self.values) - set(declared):
            return f"values for parameters it does not declare: {', '.join(sorted(set(self.values) - set(declared)))}"
        for name, value in self.all_values.items():
            problem = declared[name].problem(value)
            if problem:
                return f"parameter {name} {problem}"
            if declared[name].sets and getattr(self, declared[name].sets) != value:
                return f"parameter {name} sets {declared[name].sets}: the row's {declared[name].sets} must be {value!r}"
        if (self.ranks is None) == ("rho" in declared):
            return "a rank allocation and its rho parameter go together"
        if "freeze_a" in declared and not init.seeded_A:
            return f"init {self.init} does not seed A: nothing for freeze_a to freeze"
        return None

    # ------------------------------------------------------------------ parameters
    @property
    def all_values(self) -> dict[str, Any]:
        """Every parameter's value: the row's, else the declared default."""
        return {p.name: self.values.get(p.name, p.default) for p in self.params}

    def value(self, name: str, default: Any = None) -> Any:
        """Parameter ``name``'s value (``default`` when the row has no such parameter)."""
        return self.all_values.get(name, default)

    def stage_values(self, stage: str) -> dict[str, Any]:
        """The values of the parameters read at ``stage`` ("build" or "train")."""
        return {p.name: self.value(p.name) for p in self.params if p.stage == stage}

    def configured(self, **given: Any) -> Method:
        """This row with the parameters ``given`` (None: not given); one line for a parameter it does
        not have or a value out of range."""
        declared = {p.name: p for p in self.params}
        given = {k: v for k, v in given.items() if v is not None and (k in declared or v is not False)}  # False:
        for name, value in given.items():  # a bool flag left off, which asks nothing of a row without it
            if name not in declared:
                having = [m.name for m in METHODS.values() if any(p.name == name for p in m.params)]
                flag = "--" + name.replace("_", "-")
                raise SvdadaptError(f"{flag} applies to {', '.join(having) or 'no method'}, not to {self.name}")
            problem = declared[name].problem(value)
            if problem:
                raise SvdadaptError(f"{declared[name].flag} {problem}")
        if not given:
            return self
        coerced = {k: float(v) if declared[k].type is float else v for k, v in given.items()}
        sets = {declared[k].sets: v for k, v in coerced.items() if declared[k].sets}
        return replace(self, values={**self.values, **coerced}, **sets)

    @property
    def rho(self) -> float | None:
        """A rank-allocating row's ρ: a layer may hold up to round(ρ·r) components."""
        return self.value("rho") if self.ranks is not None else None

    @property
    def freeze_a(self) -> bool:
        """Whether A stays as initialised during training."""
        return bool(self.value("freeze_a", False))

    # ------------------------------------------------------------------ record
    def record(self) -> dict[str, Any]:
        """What run.json records of the row: its name, decomposition and build parameters."""
        return {"method": self.name, "decomposition": self.decomposition, "params": self.stage_values("build")}

    @staticmethod
    def from_record(meta: dict) -> Method:
        """The row a run.json records (also those written before rows recorded ``params``: their ρ,
        freeze_a and a truncating row's decomposition)."""
        row = get_method(meta["method"])
        params = meta.get("params")
        if not isinstance(params, dict):  # older runs: the parameters sat beside the method
            params = {"rho": meta.get("rho"), "freeze_a": meta.get("freeze_a") is True or None}
            if any(p.sets == "decomposition" for p in row.params):
                params["truncation"] = meta.get("decomposition")
            params = {k: v for k, v in params.items() if any(p.name == k for p in row.params)}
        return row.configured(**params)

    # ------------------------------------------------------------------ what it does
    @property
    def needs(self) -> str | None:
        """The calibration statistic this method's decomposition (or its quantized init) needs, if any."""
        if self.decomposition:
            return DECOMPOSITIONS[self.decomposition].needs
        return QUANTIZED_INITS[self.quantized_init]

    @property
    def changes_base(self) -> bool:
        """Whether building writes a new frozen base (else the original model serves as the base)."""
        return self.base is not Base.ORIGINAL

    @property
    def original_at_init(self) -> bool:
        """Whether the adapted model at init is the original model itself (the untouched weight and
        an adapter that adds nothing), so that evaluating it again shows nothing new."""
        return self.base is Base.ORIGINAL and self.quantized_init is None


KASA = Method(
    "kasa", "KaSA: drop the bottom-r SVD components, train BΔΣA", "lora", "plain", Take.BOTTOM, Base.TRUNCATED,
    diag=True, loss="kasa", params=(TRUNCATION, BETA, GAMMA),
)  # fmt: skip
TABLE = (
    Method("lora", "LoRA: A Kaiming, B = 0, on the untouched weight", "lora", loss="l2-init", params=(L2_INIT,)),
    Method("pissa", "PiSSA: adapter from the top-r SVD components", "svd", "plain", Take.TOP, Base.RESIDUAL,
           params=(FREEZE_A,)),
    Method("milora", "MiLoRA: adapter from the bottom-r SVD components", "svd", "plain", Take.BOTTOM, Base.RESIDUAL,
           params=(FREEZE_A,)),
    Method("corda-ipa", "CorDA instruction-previewed: top-r of W·C", "svd", "context", Take.TOP, Base.RESIDUAL,
           params=(FREEZE_A,)),
    Method("corda-kpa", "CorDA knowledge-preserved: bottom-r of W·C", "svd", "context", Take.BOTTOM, Base.RESIDUAL,
           params=(FREEZE_A,)),
    KASA,
    replace(KASA, name="kasa-context", summary="KaSA dropping the bottom-r of W·C (its truncation: context)",
            decomposition="context", values={"truncation": "context"}),
    Method(
        "eva", "EVA: A from the inputs' top principal directions, B = 0, ranks by explained variance", "eva",
        "inputs", Take.TOP, ranks="explained-variance", params=(RHO, FREEZE_A),
    ),
    Method("lora-null", "LoRA-Null: adapter from W on the inputs' null space", "svd", "null", Take.TOP, Base.RESIDUAL,
           params=(FREEZE_A,)),
    Method("cloq", "CLoQ: on the quantized W, A and B minimising the error on the calibration inputs (--quantize)",
           "lora", quantized_init="cloq"),
)  # fmt: skip
METHODS: dict[str, Method] = {method.name: method for method in TABLE}


def register_method(method: Method) -> Method:
    """Add a row to the table (its flags, keys and record follow from it); returns it."""
    METHODS[method.name] = method
    return method


def get_method(name: str, **params: Any) -> Method:
    """The table row for ``name``, configured with ``params`` (its own parameters; None: not given)."""
    if name not in METHODS:
        raise unknown("method", name, METHODS)
    return METHODS[name].configured(**params)
