"""Processes and devices: which process of a launch (`torchrun`, `accelerate launch`) this is, its
device, and the collective steps that calibration across processes needs.

Training under such a launcher is Trainer's own data parallelism; svdadapt makes sure that one
process writes the run and that each process starts on its own accelerator. Calibration in a
``torch.distributed`` process group gives each rank every world_size-th batch and all-reduces the
sums.

A process of a launch whose peer stops ends with one line: a collective that loses its peer raises,
and the launcher's SIGTERM (``torchrun`` stops the others when one fails) becomes an error too, so
atomic writes in progress are dropped. ``SVDADAPT_PROCESS_TIMEOUT`` (seconds) bounds how long a
collective waits for a peer that hangs (default: torch's, 10 minutes for NCCL and 30 for gloo).
The hand-over at the end, where the others wait while rank 0 writes the run or the store (a 70B
base: minutes), is *patient*: it waits up to a day, whatever that variable says; a peer that dies
is still reported at once.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from ..errors import SvdadaptError

T = TypeVar("T")
TIMEOUT_VARIABLE = "SVDADAPT_PROCESS_TIMEOUT"
PATIENT_DEFAULT = timedelta(days=1)
_patient: list = [None]  # the gloo group of the patient hand-over, while process_group() holds one
AGAIN = "what was written is complete or was not kept: launch again, with --resume where the command takes it"


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
    """This process's share of ``items`` in a process group (every world_size-th), else all of them;
    a one-line error, on every process, when a list of batches has fewer than one per process."""
    if not in_process_group():
        return items
    if isinstance(items, Sequence):
        check_shares(len(items))
    return itertools.islice(items, dist.get_rank(), None, dist.get_world_size())


def check_shares(batches: int) -> None:
    """Every process of the group gets at least one of ``batches`` calibration batches, or one line."""
    processes = dist.get_world_size() if in_process_group() else 1
    if batches < processes:
        raise SvdadaptError(
            f"{processes} processes were launched for {batches} calibration batch{'es' if batches != 1 else ''}, "
            f"and each needs one at least: make {processes} batches or more (raise --samples or lower "
            f"--batch-size), or launch {max(batches, 1)} process{'es' if batches > 1 else ''} at most"
        )


@contextmanager
def _collective() -> Iterator[None]:
    """A step all processes take together: if another process of the launch died, failed or hangs
    (past the timeout), one line."""
    try:
        yield
    except RuntimeError as exc:  # gloo and NCCL report a peer that is gone as RuntimeError
        raise SvdadaptError(
            f"another process of the launch stopped or does not answer ({_reason(exc)}); {AGAIN}"
        ) from None


def _reason(exc: BaseException) -> str:
    """The first sentence of a collective's error, without gloo's source location."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip()).split("\n")[0]
    return text.split(". ")[0].rstrip(".") or type(exc).__name__


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
    timeout = _timeout()
    try:
        dist.init_process_group(kind, **({"timeout": timeout} if timeout is not None else {}))
    except (RuntimeError, ValueError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SvdadaptError(f"could not join the other processes of the launch ({text})") from None
    try:
        _patient[0] = dist.new_group(backend="gloo", timeout=PATIENT_DEFAULT)
        with _stopped_by_launcher():
            yield
    finally:
        _patient[0] = None
        dist.destroy_process_group()


def _timeout() -> timedelta | None:
    """``SVDADAPT_PROCESS_TIMEOUT`` as a timedelta, if set."""
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise SvdadaptError(f"{TIMEOUT_VARIABLE}={text!r}: give the seconds a collective may wait, a positive number")
    return timedelta(seconds=seconds)


def _stopped_by_launcher():
    """SIGTERM from the launcher stopping the processes left when one failed: a one-line error."""
    return stop_on_sigterm(f"the launcher stopped this process (another process of the launch failed); {AGAIN}")


@dataclass
class _Guard:
    """The SIGTERM guards in force (innermost last) and whether this process is already stopping."""

    messages: list[str] = field(default_factory=list)
    stopping: str = ""  # "error": an error is on its way out; "sigterm": a SIGTERM became the error
    previous: object = None  # the handler before the outermost guard


_guard = _Guard()


def _on_sigterm(signum, frame) -> None:
    if _guard.stopping == "error":
        return  # already stopping on an error (a peer lost, say): its message stands, cleanup goes on
    if _guard.stopping == "sigterm":
        signal.signal(signal.SIGTERM, _guard.previous)  # a second SIGTERM ends the process as usual
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _guard.stopping = "sigterm"
    raise SvdadaptError(_guard.messages[-1])


@contextmanager
def stop_on_sigterm(message: str) -> Iterator[None]:
    """Inside, SIGTERM (a launcher, a scheduler's stop, ``kill``) raises a one-line error with
    ``message`` (the innermost guard's) where this process is, so that what it was writing atomically
    is dropped and its temporary files are removed, as after Ctrl-C, not left half-done. While an
    error is already on its way out, a SIGTERM (the launcher stopping the others) is ignored, so the
    first reason is the one said."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = not _guard.messages
    if outermost:
        _guard.previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _guard.messages.append(message)
    try:
        yield
    except BaseException:
        _guard.stopping = _guard.stopping or "error"
        raise
    finally:
        _guard.messages.pop()
        if outermost:
            signal.signal(signal.SIGTERM, _guard.previous)
            _guard.stopping, _guard.previous = "", None


def rank() -> int:
    """This process's rank in its process group (0 without one)."""
    return dist.get_rank() if in_process_group() else 0


def barrier(patient: bool = False) -> None:
    """Wait until every process of the group arrives (nothing in one process); ``patient``: as long as
    rank 0's writing may take (see the module docstring)."""
    if in_process_group():
        with _collective():
            dist.barrier(group=_patient[0] if patient else None)


def from_main(value: T, patient: bool = False) -> T:
    """Rank 0's ``value`` on every process (``value`` itself in one process); ``patient``: the others
    wait as long as rank 0's writing may take (see the module docstring)."""
    if not in_process_group():
        return value
    box = [value]
    with _collective():
        dist.broadcast_object_list(box, src=0, group=_patient[0] if patient else None)
    return box[0]


def gathered(values: list[T]) -> list[T]:
    """Every process's ``values``, concatenated in rank order, on every process."""
    if not in_process_group():
        return values
    boxes: list = [None] * dist.get_world_size()
    with _collective():
        dist.all_gather_object(boxes, values)
    return [v for box in boxes for v in box]
