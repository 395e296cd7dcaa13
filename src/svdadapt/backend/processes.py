"""The processes of a launch (`torchrun`, `accelerate launch`) and the steps they take together.

:func:`launch` is this process's launch, the one place that knows rank and world size: a
:class:`Launch` (one process: it writes, its share of a list is all of it, every collective step
is a no-op) or, under a launcher, a :class:`Group`. Commands receive it and call it — whether this
process writes (``writer``), its ``share`` of the batches, ``sum``, ``from_writer``, ``barrier`` —
and never ask which rank they are.

Calibration in a group gives each process every size-th batch and adds up the sums; a build also
shares out each block's layers; training under a launcher is Trainer's own data parallelism (its
group, not one of ours): svdadapt makes sure that one process writes the run.

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
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from ..errors import SvdadaptError
from .devices import default_device
from .scheduling import LayerPool, SharedLayerPool
from .signals import stop_on_sigterm

T = TypeVar("T")
TIMEOUT_VARIABLE = "SVDADAPT_PROCESS_TIMEOUT"
PATIENT_DEFAULT = timedelta(days=1)
AGAIN = "what was written is complete or was not kept: launch again, with --resume where the command takes it"


def launch(device: str | torch.device | None = None) -> Launch:
    """This process's launch: a :class:`Group` under a launcher (WORLD_SIZE > 1), else a
    :class:`Launch` of one process. ``with`` it, the processes are joined for its collective steps,
    on ``device``'s kind (default: this process's device); without, it only says who writes and how
    many there are (training: the group is Trainer's to start)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return Launch()
    return Group(int(os.environ.get("RANK", "0")), size, device)


class Launch:
    """One process, no launcher: it writes, its share of a list is all of it, every collective
    step is a no-op. :class:`Group` is the same face over several processes."""

    size = 1  # processes in the launch (for messages and records)
    writer = True  # whether this process writes what the launch makes (and holds its lock)

    def __enter__(self) -> Launch:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def share(self, items: Iterable[T]) -> Iterable[T]:
        """This process's share of ``items``: all of them."""
        return items

    def check_shares(self, batches: int) -> None:
        """Every process gets at least one of ``batches`` calibration batches, or one line."""
        if batches < self.size:
            raise SvdadaptError(
                f"{self.size} processes were launched for {batches} calibration batch{'es' if batches != 1 else ''}, "
                f"and each needs one at least: make {self.size} batches or more (raise --samples or lower "
                f"--batch-size), or launch {max(batches, 1)} process{'es' if batches > 1 else ''} at most"
            )

    def sum(self, tensors: Iterable[torch.Tensor]) -> None:
        """Replace each tensor, in place, by its sum over the processes: as it is, in one."""

    def from_writer(self, value: T, patient: bool = False) -> T:
        """The writer's ``value`` on every process: ``value`` itself, in one."""
        return value

    def barrier(self, patient: bool = False) -> None:
        """Wait until every process arrives: nothing to wait for, in one."""

    def gathered(self, values: list[T]) -> list[T]:
        """Every process's ``values``, concatenated in rank order: ``values``, in one."""
        return values

    def layer_pool(self, workers: int) -> LayerPool:
        """Per-layer jobs on ``workers`` threads of this process."""
        return LayerPool(workers)

    def require_alone(self, message: str) -> None:
        """The one-line error ``message`` in a launch of several processes; nothing in one."""


@dataclass
class Group(Launch):
    """Process ``rank`` of the ``size`` processes of a launcher; inside its ``with``, in a
    ``torch.distributed`` group with the others (NCCL on GPUs, gloo on CPUs), whose steps wait for
    every process (see the module docstring for peers lost and patience). A group someone else
    started (Trainer's) is used as it is."""

    rank: int
    size: int
    device: str | torch.device | None = None
    _patient: object = field(default=None, init=False, repr=False)  # the gloo group of the hand-over
    _joined: ExitStack | None = field(default=None, init=False, repr=False)  # what leaving undoes

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def __enter__(self) -> Group:
        if dist.is_available() and dist.is_initialized():
            return self
        device = torch.device(self.device if self.device is not None else default_device())
        kind = "nccl" if device.type == "cuda" else "gloo"
        if kind == "nccl":
            torch.cuda.set_device(device)
        timeout = _timeout()
        try:
            dist.init_process_group(kind, **({"timeout": timeout} if timeout is not None else {}))
        except (RuntimeError, ValueError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SvdadaptError(f"could not join the other processes of the launch ({text})") from None
        with ExitStack() as stack:  # undone in reverse: the SIGTERM guard, the patient group, the group
            stack.callback(dist.destroy_process_group)
            stack.callback(setattr, self, "_patient", None)
            self._patient = dist.new_group(backend="gloo", timeout=PATIENT_DEFAULT)
            stack.enter_context(_stopped_by_launcher())
            self._joined = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        joined, self._joined = self._joined, None
        if joined is not None:
            joined.__exit__(*exc)

    def share(self, items: Iterable[T]) -> Iterable[T]:
        """Every size-th of ``items``, from this rank's; a one-line error, on every process, when a
        list of batches has fewer than one per process."""
        if isinstance(items, Sequence):
            self.check_shares(len(items))
        return itertools.islice(items, self.rank, None, self.size)

    def sum(self, tensors: Iterable[torch.Tensor]) -> None:
        with _collective():
            for tensor in tensors:
                dist.all_reduce(tensor)

    def from_writer(self, value: T, patient: bool = False) -> T:
        """Rank 0's ``value`` on every process; ``patient``: the others wait as long as rank 0's
        writing may take."""
        box = [value]
        with _collective():
            dist.broadcast_object_list(box, src=0, group=self._patient if patient else None)
        return box[0]

    def barrier(self, patient: bool = False) -> None:
        """Wait until every process arrives; ``patient``: as long as rank 0's writing may take."""
        with _collective():
            dist.barrier(group=self._patient if patient else None)

    def gathered(self, values: list[T]) -> list[T]:
        boxes: list = [None] * self.size
        with _collective():
            dist.all_gather_object(boxes, values)
        return [v for box in boxes for v in box]

    def layer_pool(self, workers: int) -> LayerPool:
        """Per-layer jobs shared out over the processes (see :class:`SharedLayerPool`)."""
        return SharedLayerPool(workers, self.rank, self.size, self.gathered)

    def require_alone(self, message: str) -> None:
        raise SvdadaptError(message)


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
