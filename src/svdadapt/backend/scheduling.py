"""Per-layer jobs over workers, longest first by one cost model.

On CPU, independent layers are decomposed side by side, one per core, each single-threaded: float64
GEMMs and eigensolvers of this size scale poorly across threads, independent layers perfectly. On an
accelerator one layer runs at a time (the device is parallel already). The order of the results
never depends on scheduling: callers draw random numbers beforehand and key results by name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

T = TypeVar("T")


@dataclass
class LayerJob(Generic[T]):
    """One layer's work: ``run()`` for the layer called ``name`` whose weight is (out, in)."""

    name: str
    shape: tuple[int, int]  # (out, in)
    run: Callable[[], T]

    @property
    def cost(self) -> int:
        """Relative cost of decomposing an (out, in) weight: the context product W·K, its Gram matrix
        and the eigensolver (about 4k³: its reduction is half matrix-vector work). On SmolLM2's layers
        it orders them as measured (down_proj, then gate/up, q/o, k/v)."""
        out_f, in_f = self.shape
        k = min(out_f, in_f)
        return out_f * in_f * in_f + k * k * max(in_f, out_f) + 4 * k**3


@contextmanager
def single_threaded(enabled: bool = True) -> Iterator[None]:
    """One torch and one BLAS thread in this thread while inside (workers of a pool run side by side)."""
    if not enabled:
        yield
        return
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(previous)


class LayerPool:
    """Runs :class:`LayerJob` lists on ``workers`` threads (each with one torch thread when several)."""

    def __init__(self, workers: int) -> None:
        self.workers = max(workers, 1)
        initializer = torch.set_num_threads if self.workers > 1 else None  # torch's limit is per thread
        self._pool = ThreadPoolExecutor(self.workers, initializer=initializer, initargs=(1,))

    def map(self, jobs: Iterable[LayerJob[T]]) -> Iterator[tuple[str, T]]:
        """``(name, result)`` of every job, the most costly started first (balanced workers). The
        caller's own thread is limited to one BLAS thread meanwhile, then restored (the code between
        two maps, e.g. a model forward, runs with every thread)."""
        ordered = sorted(jobs, key=lambda job: -job.cost)
        with single_threaded(self.workers > 1):
            results = list(self._pool.map(lambda job: job.run(), ordered))
        return zip([job.name for job in ordered], results)

    def map_here(self, jobs: Iterable[LayerJob[T]]) -> Iterator[tuple[str, T]]:
        """The same as :meth:`map`: there is one process."""
        return self.map(jobs)

    def close(self) -> None:
        self._pool.shutdown()

    def __enter__(self) -> LayerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SharedLayerPool(LayerPool):
    """A :class:`LayerPool` of process ``rank`` among ``size`` (a launch's group): :meth:`map` gives
    each process a share of the jobs (the longest first, each to the least-loaded process: the same
    plan on every process) and hands every result to every process (``gathered``: every process's
    list, in rank order); :meth:`map_here` runs jobs in this process only (e.g. writing, which one
    process does)."""

    def __init__(self, workers: int, rank: int, size: int, gathered: Callable[[list], list]) -> None:
        super().__init__(workers)
        self.rank, self.size, self.gathered = rank, size, gathered

    def map(self, jobs: Iterable[LayerJob[T]]) -> Iterator[tuple[str, T]]:
        ordered = sorted(jobs, key=lambda job: -job.cost)
        load = [0] * self.size
        mine = []
        for job in ordered:  # longest processing time first
            owner = load.index(min(load))
            load[owner] += job.cost
            if owner == self.rank:
                mine.append(job)
        results = dict(self.gathered(list(super().map(mine))))
        return ((job.name, results[job.name]) for job in ordered)

    def map_here(self, jobs: Iterable[LayerJob[T]]) -> Iterator[tuple[str, T]]:
        return super().map(jobs)


def cpu_workers() -> int:
    """Layers side by side on CPU: one per core torch may use."""
    return min(torch.get_num_threads(), os.cpu_count() or 1)
