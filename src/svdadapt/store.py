"""CovarianceStore: per-layer input covariances on disk as safetensors shards plus JSON metadata.

Layout of a store directory::

    store.json                  metadata, written last: its presence marks the store complete
    covariances-00000.safetensors  one shard per block (or per batch of groups): for every group key
                                   "<key>.covariance" (in, in), "<key>.mean_abs" (in,) and, in
                                   stores written since means were kept, "<key>.mean" (in,)

``store.json`` holds the model identity (name, architecture, weights fingerprint), the source spec,
sample count, sequence length, real tokens seen, dtype, the module-name → group-key map and, per
group, its shard, dimension, token count and whether it holds the mean (``"mean": true``; absent
in older stores, which stay readable: only what needs the mean asks to recalibrate). No pickle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic import atomic_directory, write_json, write_safetensors
from .errors import SvdadaptError
from .files import (
    check_safetensors,
    file_record,
    inside,
    no_links_out,
    open_tensors,
    read_json,
    require_fields,
    verify_record,
)
from .options import opt


def covariances_option(needed_by: str) -> str | None:
    """The ``--covariances`` option of the commands that read a store (build, compress)."""
    return opt(None, f"covariance store from `svdadapt calibrate` of this model ({needed_by})", metavar="DIR")


FORMAT = "svdadapt.covariance-store"
VERSION = 1
METADATA_FILE = "store.json"
DAMAGED = "the store is damaged: recalibrate (svdadapt calibrate) into a new directory"


def shard_name(index: int) -> str:
    return f"covariances-{index:05d}.safetensors"


@dataclass
class FinishedGroup:
    """Final statistics of layers that read one input: C = Σ x xᵀ / n and mean |x| over n tokens
    (what calibration hands over, and what a store holds per group)."""

    key: str
    members: list[str]
    covariance: torch.Tensor  # (in, in), symmetric
    mean_abs: torch.Tensor  # (in,)
    count: int
    masked: bool = True
    mean: torch.Tensor | None = None  # (in,), mean x (None: sums resumed from before it was kept)


@dataclass
class StoredGroup:
    shard: str
    dim: int
    count: int
    masked: bool = True
    mean: bool = False  # whether the shard holds "<key>.mean"


NO_MEAN = "recalibrate (svdadapt calibrate) into a new directory: this version records it"


@dataclass
class CovarianceStore:
    """Input covariances C = Σ x xᵀ / n (mean over real tokens) and mean |x| of target layers."""

    metadata: dict = field(default_factory=dict)
    module_to_group: dict[str, str] = field(default_factory=dict)
    groups: dict[str, StoredGroup] = field(default_factory=dict)
    path: Path | None = None
    _tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        """One short line: where it lives, what it covers (the full record is ``metadata``)."""
        where = f"{self.path.name!r}, " if self.path is not None else ""
        model = self.metadata.get("model", {})
        name = f"model={model.get('name')!r}, " if isinstance(model, dict) and model.get("name") else ""
        return (
            f"CovarianceStore({where}{name}{len(self.module_to_group)} layers in {len(self.groups)} groups, "
            f"{self.num_tokens} tokens, {str(self.dtype).removeprefix('torch.')})"
        )

    # ------------------------------------------------------------ building
    def add(self, group: FinishedGroup, shard: str = shard_name(0)) -> None:
        """Add one finished group (held in memory until :meth:`save`)."""
        for name in group.members:
            self.module_to_group[name] = group.key
        has_mean = group.mean is not None
        self.groups[group.key] = StoredGroup(shard, int(group.covariance.shape[0]), group.count, group.masked, has_mean)
        self._tensors[f"{group.key}.covariance"] = group.covariance.detach().cpu()
        self._tensors[f"{group.key}.mean_abs"] = group.mean_abs.detach().cpu()
        if has_mean:
            self._tensors[f"{group.key}.mean"] = group.mean.detach().cpu()

    # ------------------------------------------------------------ reading
    @property
    def modules(self) -> list[str]:
        """Names of the layers covered, in model order."""
        return list(self.module_to_group)

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens the model saw during calibration."""
        return int(self.metadata.get("num_tokens", 0))

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.metadata.get("dtype", "float64"))

    def group_key(self, module_name: str) -> str:
        if module_name not in self.module_to_group:
            raise SvdadaptError(
                f"the covariance store has no entry for layer {module_name}; recalibrate with targets that include it"
            )
        return self.module_to_group[module_name]

    def _tensor(self, key: str) -> torch.Tensor:
        if key in self._tensors:
            return self._tensors[key]
        group_key, part = key.rsplit(".", 1)
        group = self.groups[group_key]
        if self.path is None:
            raise KeyError(key)
        path = inside(self.path, group.shard, f"{self.path / METADATA_FILE}")
        with open_tensors(path, "covariance shard", DAMAGED) as f:
            if key not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                raise SvdadaptError(f"covariance shard {path} lacks {key}; {DAMAGED}")
            tensor = f.get_tensor(key)
        shape = (group.dim, group.dim) if part == "covariance" else (group.dim,)
        if tuple(tensor.shape) != shape or not tensor.is_floating_point():
            raise SvdadaptError(
                f"covariance shard {path}: {key} is {tensor.dtype} {tuple(tensor.shape)}, not a float tensor of "
                f"shape {shape}; {DAMAGED}"
            )
        return tensor

    def covariance(self, module_name: str) -> torch.Tensor:
        """(in, in) mean of x xᵀ over the real tokens that reached ``module_name``."""
        return self._tensor(f"{self.group_key(module_name)}.covariance")

    def mean_abs(self, module_name: str) -> torch.Tensor:
        """(in,) mean of |x| per input channel (for ASVD)."""
        return self._tensor(f"{self.group_key(module_name)}.mean_abs")

    def mean(self, module_name: str) -> torch.Tensor:
        """(in,) mean of x per input channel (to centre the covariance, as EVA's PCA does)."""
        self.require("mean", [module_name])
        return self._tensor(f"{self.group_key(module_name)}.mean")

    def require(self, statistic: str, names: Iterable[str]) -> None:
        """Refuse, in one line, a store that lacks ``statistic`` for any of the layers ``names``."""
        if statistic != "mean":  # every store holds the covariance and mean |x|
            return
        lacking = [n for n in names if not self.groups[self.group_key(n)].mean]
        if lacking:
            raise SvdadaptError(
                f"the covariance store at {self.path} holds no mean of the inputs of {lacking[0]} (written "
                f"before svdadapt kept it); {NO_MEAN}"
            )

    def members(self, key: str) -> list[str]:
        """The layers of one covariance group (layers that read the same input)."""
        return [m for m, k in self.module_to_group.items() if k == key]

    def shared_with(self, module_name: str) -> list[str]:
        """Every layer that reads the same input as ``module_name`` (itself included)."""
        return self.members(self.group_key(module_name))

    # ------------------------------------------------------------ disk
    def describe(self) -> dict:
        """The JSON metadata written as store.json."""
        return {
            "format": FORMAT,
            "version": VERSION,
            **self.metadata,
            "modules": self.module_to_group,
            "groups": {k: vars(g) for k, g in self.groups.items()},
        }

    def save(self, path: str | Path) -> None:
        """Write the store to ``path`` atomically (a reader never sees a partial store). What is there
        already is replaced only when it is a covariance store, or an empty folder."""
        path = Path(path)
        if path.exists() and not (path.is_dir() and ((path / METADATA_FILE).is_file() or not any(path.iterdir()))):
            raise SvdadaptError(f"{path} exists and is not a covariance store; save the store to another path")
        with atomic_directory(path) as tmp:
            by_shard: dict[str, dict[str, torch.Tensor]] = {}
            for key, group in self.groups.items():
                shard = by_shard.setdefault(group.shard, {})
                for suffix in ("covariance", "mean_abs", "mean") if group.mean else ("covariance", "mean_abs"):
                    shard[f"{key}.{suffix}"] = self._tensor(f"{key}.{suffix}")
            for shard, tensors in by_shard.items():
                write_safetensors(tmp / shard, tensors)
            self.metadata["files"] = {shard: file_record(tmp / shard) for shard in by_shard}
            write_json(tmp / METADATA_FILE, self.describe())
        self.path = path

    @classmethod
    def load(cls, path: str | Path) -> CovarianceStore:
        """Open a store directory (tensors are read lazily, shard by shard)."""
        if not isinstance(path, (str, Path)):
            raise TypeError(f"CovarianceStore.load takes a store's path (str or Path), not {type(path).__name__}")
        path = Path(path)
        meta_file = path / METADATA_FILE
        if not meta_file.is_file():
            if path.is_dir() and (path / ".partial").is_dir():
                raise SvdadaptError(f"{path} holds an interrupted calibration; finish it with --resume")
            raise SvdadaptError(f"{path} is not a covariance store (no {METADATA_FILE}); run svdadapt calibrate")
        no_links_out(path, "covariance store")
        meta = read_json(meta_file, "covariance store index", DAMAGED)
        if meta.get("format") != FORMAT:
            raise SvdadaptError(f"{path} is not a covariance store ({meta_file} has another format)")
        require_fields(meta, {"version": int, "modules": dict, "groups": dict, "model": dict}, str(meta_file), DAMAGED)
        if meta["version"] > VERSION:
            raise SvdadaptError(f"{path} was written by a newer svdadapt (store version {meta['version']})")
        groups = {}
        for key, record in meta.pop("groups").items():
            where = f"{meta_file}, group {key!r}"
            require_fields(record, {"shard": str, "dim": int, "count": int}, where, DAMAGED)
            groups[key] = StoredGroup(record["shard"], record["dim"], record["count"], bool(record.get("masked", True)),
                                      record.get("mean") is True)  # fmt: skip
        modules = meta.pop("modules")
        if not all(isinstance(k, str) and v in groups for k, v in modules.items()):
            raise SvdadaptError(f"{meta_file} maps a layer to a group it does not list; {DAMAGED}")
        files = meta.get("files") or {}
        for shard in sorted({g.shard for g in groups.values()}):
            shard_path = inside(path, shard, str(meta_file))  # before anything is opened
            verify_record(shard_path, files.get(shard), "covariance shard", DAMAGED, checksum=False)
            check_safetensors(shard_path, "covariance shard", DAMAGED)
        for k in ("format", "version"):
            meta.pop(k)
        return cls(metadata=meta, module_to_group=modules, groups=groups, path=path)

    def verify(self) -> None:
        """Every shard is the file that was written (sizes and checksums, where recorded)."""
        files = self.metadata.get("files") or {}
        for shard in sorted({g.shard for g in self.groups.values()}):
            verify_record(inside(self.path, shard, str(self.path / METADATA_FILE)), files.get(shard),
                          "covariance shard", DAMAGED)  # fmt: skip

    @classmethod
    def from_groups(cls, groups: Iterable[FinishedGroup], metadata: dict) -> CovarianceStore:
        store = cls(metadata=dict(metadata))
        for group in groups:
            store.add(group)
        return store

    def check_covers(self, fingerprint: str, names: Iterable[str]) -> None:
        """Refuse a store computed on a different model, or one that lacks any of the layers ``names``."""
        mine = self.metadata.get("model", {}).get("fingerprint")
        if mine != fingerprint:
            name = self.metadata.get("model", {}).get("name", "another model")
            raise SvdadaptError(
                f"the covariance store at {self.path} was computed on {name} (weights fingerprint "
                f"{str(mine)[:12]}), not on this model ({fingerprint[:12]}); recalibrate on this model"
            )
        missing = [n for n in names if n not in self.module_to_group]
        if missing:
            raise SvdadaptError(
                f"the covariance store lacks {len(missing)} target layers (e.g. {missing[0]}); "
                "recalibrate with the same --targets"
            )
