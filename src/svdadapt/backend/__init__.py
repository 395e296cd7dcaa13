"""The back end: every decision about how work runs fast on this machine, behind a few entry points.

Domain code (calibrate, decompose, build, train, evaluate, compress) calls only what this face
exports, never the modules behind it:

- ``on(device)`` → a :class:`Backend` for that kind of device (``kernels.py``): ``forward_products()`` (the context
  for forward passes without gradients), ``accumulate_gram`` / ``gram`` (triangular Gram products),
  ``eigh`` (symmetric eigensolvers) and ``layer_pool()`` (per-layer jobs over workers, longest first
  by one cost model). A CUDA or multi-process back end is a new :class:`Backend`, not a branch in
  domain code.
- ``place`` → a :class:`Placement`: whether a model is loaded onto its compute device or
  offloaded (memory-mapped on the host, each block brought over by ``on_compute`` while it
  works); ``HiddenStates``: where a block-wise pass keeps its cached hidden states (device, host
  or memory-mapped files).
- ``open_base_writer`` → the writer of a run's frozen base (streamed into a copy of the checkpoint,
  or saved). Memory goes back to the OS in one place, ``pages.py``, which placement and the base
  writer both use.
- processes and devices: ``resolve_device``, ``default_device``, ``process_group`` (joins the
  other processes of a launch), ``world_size``, ``rank``, ``is_main_process``, ``share_of``, ``check_shares``,
  ``sum_across_processes``, ``from_main``, ``barrier``, ``stop_on_sigterm`` (SIGTERM as an error).
- the garbage collector (``collector.py``): ``collection_paused``, ``set_aside_live_objects``.
"""

from .collector import collection_paused, set_aside_live_objects

with collection_paused():  # torch: many long-lived objects, no garbage
    from .base_writer import BaseWriter, open_base_writer
    from .gram import mirror_upper
    from .hidden import HiddenStates
    from .kernels import Backend, on
    from .launch import (
        barrier,
        check_shares,
        default_device,
        from_main,
        in_process_group,
        is_main_process,
        process_group,
        rank,
        resolve_device,
        share_of,
        stop_on_sigterm,
        sum_across_processes,
        world_size,
    )
    from .placement import Placement, on_compute, place
    from .scheduling import LayerJob, LayerPool

__all__ = [
    "Backend",
    "barrier",
    "check_shares",
    "from_main",
    "process_group",
    "rank",
    "BaseWriter",
    "LayerJob",
    "LayerPool",
    "collection_paused",
    "default_device",
    "in_process_group",
    "is_main_process",
    "mirror_upper",
    "on",
    "on_compute",
    "HiddenStates",
    "place",
    "Placement",
    "open_base_writer",
    "resolve_device",
    "set_aside_live_objects",
    "share_of",
    "stop_on_sigterm",
    "sum_across_processes",
    "world_size",
]
