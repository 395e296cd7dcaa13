"""Processes and devices: which process of a launch (`torchrun`, `accelerate launch`) this is, its
device, and the collective steps that calibration across processes needs.

Training under such a launcher is Trainer's own data parallelism; svdadapt makes sure that one
process writes the run and that each process starts on its own accelerator. Calibration in a
``torch.distributed`` process group gives each rank every world_size-th batch and all-reduces the
sums.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist

from ..errors import SvdadaptError

T = TypeVar("T")


def world_size() -> int:
    """Processes in the launch (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of the launch, or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve_device(device: str | None) -> str:
    """``--device`` as given (checked), or this process's default; a one-line error if unusable."""
    device = device or default_device()
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SvdadaptError(f"unknown --device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SvdadaptError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


def default_device() -> str:
    """The default device of this process: its own GPU under a launcher, else cuda or cpu."""
    if not torch.cuda.is_available():
        return "cpu"
    if world_size() > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cuda"


def in_process_group() -> bool:
    """Whether this process shares work with others through an initialised ``torch.distributed`` group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def share_of(items: Iterable[T]) -> Iterable[T]:
    """This process's share of ``items`` in a process group (every world_size-th), else all of them."""
    if not in_process_group():
        return items
    return itertools.islice(items, dist.get_rank(), None, dist.get_world_size())


@contextmanager
def _collective() -> Iterator[None]:
    """A step all processes take together: if another process of the launch died or failed, one line."""
    try:
        yield
    except RuntimeError as exc:  # gloo and NCCL report a peer that is gone as RuntimeError
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SvdadaptError(
            f"another process of the launch stopped ({text}); what was written is complete or was not "
            "kept: launch again, with --resume where the command takes it"
        ) from None


def sum_across_processes(tensors: Iterable[torch.Tensor]) -> None:
    """Replace each tensor, in place, by its sum over the process group (nothing in one process)."""
    if in_process_group():
        with _collective():
            for tensor in tensors:
                dist.all_reduce(tensor)


@contextmanager
def process_group(device: str | torch.device) -> Iterator[None]:
    """Inside, under a launcher (``torchrun``, ``accelerate launch``: WORLD_SIZE > 1), this process is
    in a ``torch.distributed`` group with the others (NCCL on GPUs, gloo on CPUs); one process, or a
    group someone else started (Trainer's), is left as it is."""
    if world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        yield
        return
    kind = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if kind == "nccl":
        torch.cuda.set_device(torch.device(device))
    try:
        dist.init_process_group(kind)
    except (RuntimeError, ValueError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SvdadaptError(f"could not join the other processes of the launch ({text})") from None
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank in its process group (0 without one)."""
    return dist.get_rank() if in_process_group() else 0


def barrier() -> None:
    """Wait until every process of the group arrives (nothing in one process)."""
    if in_process_group():
        with _collective():
            dist.barrier()


def from_main(value: T) -> T:
    """Rank 0's ``value`` on every process (``value`` itself in one process)."""
    if not in_process_group():
        return value
    box = [value]
    with _collective():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def gathered(values: list[T]) -> list[T]:
    """Every process's ``values``, concatenated in rank order, on every process."""
    if not in_process_group():
        return values
    boxes: list = [None] * dist.get_world_size()
    with _collective():
        dist.all_gather_object(boxes, values)
    return [v for box in boxes for v in box]
