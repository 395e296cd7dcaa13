"""The smallest components of every target layer, decomposed once per decomposition and reused by
every point of a sweep; writing W − (the r smallest) into the model, and restoring W.

Only what the largest point needs is kept: for each layer the r_max smallest components as
U_d·diag(S_d) (out, r_max) and V_d (in, r_max), float32 on the CPU — for SmolLM2 at 50% about a
third of the targets' own size. The original weights are kept (on the CPU, in their own dtype) so
that every point starts from W exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import backend
from ..build.waves import Unit, decompose_waves
from ..decompose import Decomposer, Decomposition, Take
from ..linalg import add_low_rank
from ..targets import in_out_features, set_weight_matrix, weight_matrix


@dataclass
class Dropped:
    """The r_max smallest components of one layer, descending: the last r columns are the r smallest."""

    US: torch.Tensor  # (out, r_max) = U_d diag(S_d)
    V: torch.Tensor  # (in, r_max)
    S: torch.Tensor  # (r_max,)
    damping: float | None

    def without(self, W: torch.Tensor, r: int) -> torch.Tensor:
        """W minus its r smallest components (0 < r ≤ r_max), (out, in) float32."""
        assert 0 < r <= self.S.shape[0], r
        return add_low_rank(W, self.US[:, -r:], self.V[:, -r:].T, -1.0, torch.float32)  # (out, r) · (r, in)


def min_dim(module: nn.Module) -> int:
    """k = min(out, in) of a linear-like layer."""
    return min(in_out_features(module))


@torch.no_grad()
def decompose_bottom(
    row: Decomposition,
    modules: dict[str, nn.Module],
    r_max: dict[str, int],
    waves: Iterable[list[Unit]],
    progress: bool = True,
    compute: torch.device | None = None,
) -> dict[str, Dropped]:
    """The r_max[name] smallest components of every layer in ``waves`` (one factorization each), on
    the back end's decomposition device for ``compute`` (default: where the weights are)."""
    device = next(iter(modules.values())).weight.device if modules else torch.device("cpu")
    device = backend.on(compute or device).decomposition_device(compute or device)

    def job(name: str, decompose: Decomposer, _statistic: torch.Tensor | None) -> backend.LayerJob[Dropped]:
        def run() -> Dropped:
            W = weight_matrix(modules[name]).to(device)  # (out, in)
            f = decompose(W, name, (Take.BOTTOM, r_max[name]))
            backend.hand_back(modules[name].weight)  # read again only when its block's turn comes
            cpu = dict(device="cpu", dtype=torch.float32)
            return Dropped((f.U * f.S).to(**cpu), f.V.to(**cpu), f.S.to(**cpu), f.damping)

        return backend.LayerJob(name, tuple(weight_matrix(modules[name]).shape), run)

    found: dict[str, Dropped] = {}
    bar = tqdm(total=len(r_max), desc=f"decomposing ({row.name})", unit="layer", disable=not progress)
    with bar, backend.on(device).layer_pool() as pool:
        for results in decompose_waves(waves, row, r_max, device, job, pool):
            found.update(results)
            bar.update(len(results))
    return found


def keep_originals(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """CPU copies of the layers' (out, in) weights, in their own dtype."""
    return {name: weight_matrix(m).detach().to("cpu", copy=True) for name, m in modules.items()}


@torch.no_grad()
def write_point(
    modules: dict[str, nn.Module],
    originals: dict[str, torch.Tensor],
    dropped: dict[str, Dropped],
    ranks: dict[str, int],
) -> None:
    """Every layer with r > 0 becomes W − (its r smallest components), computed in float32, cast once."""
    for name, r in ranks.items():
        if r > 0:
            W = weight_matrix(modules[name])
            set_weight_matrix(modules[name], dropped[name].without(originals[name].to(W.device), r))


@torch.no_grad()
def restore(modules: dict[str, nn.Module], originals: dict[str, torch.Tensor], names: Iterable[str]) -> None:
    """Write the original weights back (exactly: same dtype, no arithmetic)."""
    for name in names:
        set_weight_matrix(modules[name], originals[name])
