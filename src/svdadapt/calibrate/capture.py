"""Forward pre-hooks that feed each target layer's input into a covariance group.

Layers that read the very same input tensor (q/k/v projections, gate/up projections) are detected at
run time — same storage, shape, strides and version as an input seen moments before in the same
forward pass — and share one :class:`GramAccumulator`. The first reader of a tensor leads its group;
the group's key is the leader's module name. Padding rows are dropped with the attention mask.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SvdadaptError
from ..targets import in_out_features
from .accumulator import GramAccumulator

_RECENT = 16  # inputs remembered per forward pass for sharing detection


def _tensor_identity(x: torch.Tensor) -> tuple:
    return (x.device, x.dtype, x.data_ptr(), x.storage_offset(), tuple(x.shape), x.stride(), x._version)


@dataclass
class Group:
    """One covariance accumulator and the layers that read its input."""

    key: str
    members: list[str]
    sums: GramAccumulator
    masked: bool = True  # False once a batch could not be matched to the attention mask


class InputCapture:
    """Hooks on target layers that accumulate Σ x xᵀ, Σ |x| and token counts per shared-input group."""

    def __init__(
        self,
        modules: dict[str, nn.Module],
        accumulate_dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        self.modules = modules
        self.accumulate_dtype = accumulate_dtype
        self.device = device
        self.groups: dict[str, Group] = {}
        self.group_of: dict[str, str] = {}  # module name -> group key
        self._recent: deque = deque(maxlen=_RECENT)
        self._mask: torch.Tensor | None = None  # (batch, seq) bool, True for real tokens
        self._batch_abs: list[tuple[str, torch.Tensor]] = []
        self._handles: list = []
        self._all_real = True
        self._mask_on: dict[torch.device, torch.Tensor] = {}

    # ---------------------------------------------------------------- lifecycle
    def attach(self) -> InputCapture:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._make_hook(name)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> InputCapture:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def begin_batch(self, attention_mask: torch.Tensor | None) -> None:
        """Call before each forward pass with that batch's attention mask (or None)."""
        self._mask = None if attention_mask is None else attention_mask.bool()
        self._all_real = self._mask is None or bool(self._mask.all())
        self._mask_on = {}
        self._recent.clear()
        self._batch_abs.clear()

    def end_batch(self) -> None:
        """Call after each forward pass: checks that every input seen was finite."""
        self._recent.clear()
        for key, batch_abs in self._batch_abs:
            if not bool(torch.isfinite(batch_abs).all()):
                members = ", ".join(self.groups[key].members)
                raise SvdadaptError(
                    f"non-finite activations (inf/nan) at the input of {members}; check the model's "
                    "weights and dtype (float16 overflow?) or the calibration data"
                )
        self._batch_abs.clear()

    # ---------------------------------------------------------------- hooks
    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                self._observe(name, module, args[0])

        return hook

    def _observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        ident = _tensor_identity(x)
        shared_with = None
        for ref, other_ident, key in self._recent:
            if other_ident == ident and ref() is not None:
                shared_with = key
                break
        known = self.group_of.get(name)
        if known is None:
            known = shared_with if shared_with is not None else name
            self.join(name, known, module)
        if known != name:  # a follower: its leader has already accumulated this very tensor
            if shared_with != known:
                raise RuntimeError(
                    f"{name} read the same input as {known} in an earlier batch but not in this one; "
                    "input sharing must be the same for every batch"
                )
            return
        self._recent.append((weakref.ref(x), ident, name))
        group = self.groups[name]
        rows = self._real_rows(x, group)
        self._batch_abs.append((name, group.sums.add(rows)))

    def join(self, name: str, key: str, module: nn.Module) -> None:
        """Make layer ``name`` a member of group ``key`` (creating the group if it is new)."""
        self.group_of[name] = key
        if key in self.groups:
            self.groups[key].members.append(name)
            return
        in_features, _ = in_out_features(module)
        device = self.device if self.device is not None else module.weight.device
        sums = GramAccumulator(in_features, self.accumulate_dtype, device)
        self.groups[key] = Group(key=key, members=[name], sums=sums)

    def _real_rows(self, x: torch.Tensor, group: Group) -> torch.Tensor:
        """(n_real, d) rows of ``x`` (batch, seq, d) that are real tokens, padding dropped."""
        d = x.shape[-1]
        if self._all_real:
            return x.reshape(-1, d)
        if tuple(x.shape[:-1]) == tuple(self._mask.shape):
            if x.device not in self._mask_on:
                self._mask_on[x.device] = self._mask.to(x.device)
            return x[self._mask_on[x.device]]
        group.masked = False  # input not aligned with tokens (e.g. routed experts): keep all rows
        return x.reshape(-1, d)

    # ---------------------------------------------------------------- results
    def groups_of(self, names: Iterable[str]) -> list[Group]:
        """The groups led by any of ``names`` (in first-seen order)."""
        wanted = set(names)
        return [g for key, g in self.groups.items() if key in wanted]
