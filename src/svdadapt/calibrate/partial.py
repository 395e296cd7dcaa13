"""An output directory being filled by a calibration run, resumable after a kill at any point.

Finished units (blocks) go straight to their final shard files, each written atomically, and are
listed under ``OUT/.partial/units``; a whole-model pass checkpoints its running sums there
periodically. ``store.json`` is written last, so a directory without it never reads as a store.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..atomic import write_json, write_safetensors
from ..errors import SvdadaptError
from ..files import file_record, inside, open_tensors, read_json, verify_record
from ..store import METADATA_FILE, CovarianceStore, FinishedGroup, StoredGroup, shard_name
from .resume import FullPassState

PARTIAL = ".partial"
FULL_STATE = "full-state.safetensors"
RESTART = "delete the output directory and calibrate again"


LATER_KEYS = ("samples_digest",)  # spec keys newer than some stores: compared only where recorded


def _same_spec(old: dict, new: dict) -> bool:
    return old == {k: v for k, v in new.items() if k in old or k not in LATER_KEYS}


def _describe_spec_difference(old: dict, new: dict) -> str:
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key == "samples_digest":
                return "the same options, but the samples' tokens differ: the data or the tokenizer changed"
            return f"{key}: {old.get(key)!r} there vs {new.get(key)!r} now"
    return "unknown difference"


def check_out_dir(out: Path, resume: bool) -> None:
    """Refuse an --out that is a file, a foreign directory, or a run that needs --resume."""
    if out.exists() and not out.is_dir():
        raise SvdadaptError(f"--out {out} is a file; choose a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if (out / METADATA_FILE).is_file():
        if not resume:
            raise SvdadaptError(f"{out} already holds a covariance store; choose another --out or delete it")
        return
    if (out / PARTIAL).is_dir():
        if not resume:
            raise SvdadaptError(f"{out} holds an interrupted calibration; add --resume to continue it")
        return
    raise SvdadaptError(f"--out {out} exists and is not a covariance store; choose another directory")


class PartialRun:
    """The state of one calibration into ``out``; ``spec`` must match to resume."""

    def __init__(self, out: Path, spec: dict, resume: bool) -> None:
        self.out = out
        self.spec = spec
        self.dir = out / PARTIAL
        self.units_dir = self.dir / "units"
        spec_file = self.dir / "spec.json"
        complete = out / METADATA_FILE
        if resume and complete.is_file():
            old = read_json(complete, "covariance store index", RESTART).get("spec", {})
            if not _same_spec(old, spec):
                raise SvdadaptError(
                    f"{out} holds a store of another spec ({_describe_spec_difference(old, spec)}); "
                    "choose another --out"
                )
        elif resume and spec_file.is_file():
            old = read_json(spec_file, "interrupted calibration's spec", RESTART)
            if not _same_spec(old, spec):
                raise SvdadaptError(
                    f"{out} holds an interrupted run of another spec ({_describe_spec_difference(old, spec)}); "
                    "rerun with the same options or choose another --out"
                )
        else:
            self.units_dir.mkdir(parents=True, exist_ok=True)
            write_json(spec_file, spec)

    @property
    def complete(self) -> bool:
        return (self.out / METADATA_FILE).is_file()

    # ------------------------------------------------------------ block units
    def done_units(self) -> list[int]:
        """The units finished before, checked: from the first whose record or shard is damaged on
        (a disk fault; their writes are atomic), the records are dropped and those units redone."""
        if not self.units_dir.is_dir():
            return []
        done = []
        for record in sorted(self.units_dir.glob("*.json")):
            if not self._unit_intact(record):
                for later in sorted(self.units_dir.glob("*.json")):
                    if later.name >= record.name:
                        later.unlink()
                break
            done.append(int(record.stem))
        return done

    def _unit_intact(self, record: Path) -> bool:
        try:
            listing = read_json(record, "unit record", RESTART)
            shards = {group["shard"] for group in listing["groups"]}
            if len(shards) != 1:
                return False
            verify_record(inside(self.out, shards.pop(), str(record)), listing.get("file"), "shard", RESTART)
            return True
        except (SvdadaptError, KeyError, TypeError):
            return False

    def write_unit(self, unit: int, groups: list[FinishedGroup]) -> None:
        shard = shard_name(unit)
        tensors: dict[str, torch.Tensor] = {}
        for g in groups:
            tensors[f"{g.key}.covariance"] = g.covariance
            tensors[f"{g.key}.mean_abs"] = g.mean_abs
            if g.mean is not None:
                tensors[f"{g.key}.mean"] = g.mean
        write_safetensors(self.out / shard, tensors)
        listing = [
            {"key": g.key, "members": g.members, "dim": int(g.covariance.shape[0]), "count": g.count,
             "masked": g.masked, "shard": shard, "mean": g.mean is not None}
            for g in groups
        ]  # fmt: skip
        write_json(self.units_dir / f"{unit:05d}.json", {"groups": listing, "file": file_record(self.out / shard)})
        (self.dir / FULL_STATE).unlink(missing_ok=True)

    # ------------------------------------------------------------ whole-model checkpoints
    def save_full_state(self, state: FullPassState) -> None:
        """One atomic file: the running sums, with the position in the safetensors header."""
        tensors = {f"{key}.{name}": t for key, sums in state.sums.items() for name, t in sums.items()}
        position = {"batches_done": state.batches_done, "samples_done": state.samples_done}
        header = {"position": json.dumps(position), "group_of": json.dumps(state.group_of)}
        write_safetensors(self.dir / FULL_STATE, tensors, metadata=header)

    @property
    def checkpointed(self) -> bool:
        """Whether a whole-model pass left a checkpoint of its running sums (one process's: it ran alone)."""
        return (self.dir / FULL_STATE).is_file()

    def load_full_state(self) -> FullPassState | None:
        path = self.dir / FULL_STATE
        if not path.is_file():
            return None
        fix = f"delete {path} to start the pass over"
        with open_tensors(path, "calibration checkpoint", fix) as f:
            header = f.metadata() or {}
            sums: dict[str, dict[str, torch.Tensor]] = {}
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                key, part = name.rsplit(".", 1)
                sums.setdefault(key, {})[part] = f.get_tensor(name)
        try:
            position = json.loads(header["position"])
            return FullPassState(
                position["batches_done"], position["samples_done"], json.loads(header["group_of"]), sums
            )
        except (KeyError, TypeError, ValueError):
            raise SvdadaptError(f"calibration checkpoint {path} has a damaged header; {fix}") from None

    # ------------------------------------------------------------ completion
    def finish(self, metadata: dict) -> CovarianceStore:
        store = CovarianceStore(metadata={**metadata, "spec": self.spec, "files": {}}, path=self.out)
        for unit in self.done_units():
            listing = read_json(self.units_dir / f"{unit:05d}.json", "unit record", RESTART)
            for g in listing["groups"]:
                for member in g["members"]:
                    store.module_to_group[member] = g["key"]
                has_mean = g.get("mean") is True
                store.groups[g["key"]] = StoredGroup(g["shard"], g["dim"], g["count"], g["masked"], has_mean)
                store.metadata["files"][g["shard"]] = listing.get("file")
        write_json(self.out / METADATA_FILE, store.describe())
        shutil.rmtree(self.dir, ignore_errors=True)
        return CovarianceStore.load(self.out)
