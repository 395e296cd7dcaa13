"""The back end: every decision about how work runs on this machine, behind a few entry points.

Domain code (calibrate, decompose, build, train, evaluate, compress) and the commands call only
what this face exports, never the modules behind it:

- ``on(device)`` → a :class:`Backend` for that kind of device (``kernels.py``): ``forward_products()``
  (the context for forward passes without gradients), ``accumulate_gram`` / ``gram`` (triangular
  Gram products), ``eigh`` (symmetric eigensolvers) and ``layer_pool(launch)`` (per-layer jobs over
  workers, longest first by one cost model, shared out over the processes of a launch). A new kind
  of device is a new :class:`Backend`, not a branch in domain code.
- ``launch(device)`` → this process's :class:`Launch` (``processes.py``), the one place that knows
  rank and world size: one process, or under a launcher (``torchrun``, ``accelerate launch``) a group
  that ``with`` joins. Callers ask it whether this process writes (``writer``), for its ``share``
  of a list, to ``sum`` tensors across processes, for the writer's value (``from_writer``), to
  wait (``barrier``, patient or not), and ``size`` for messages; in one process each is a no-op.
- ``resolve_device`` (``devices.py``): ``--device`` checked, or this process's own accelerator;
  ``stop_on_sigterm`` (``signals.py``): SIGTERM as a one-line error.
- ``free_memory(device)``: the bytes free for new tensors there (what a request is checked against
  before it allocates).
- ``place`` → a :class:`Placement`: whether a model is loaded onto its compute device or
  offloaded (memory-mapped on the host, each block brought over by ``on_compute`` while it
  works); ``HiddenStates``: where a block-wise pass keeps its cached hidden states (device, host
  or memory-mapped files).
- ``open_base_writer`` → the writer of a run's frozen base (streamed into a copy of the checkpoint,
  or saved). Memory goes back to the OS in one place, ``pages.py``, which placement and the base
  writer both use; ``hand_back(tensor)``: the mapped pages under a weight read outside a block's
  turn (a fingerprint, a check, a decomposition) go back too, whoever mapped them.
- 4-bit and 8-bit bases (``quantized.py``, bitsandbytes): ``require_bitsandbytes``, ``check_kernels``,
  ``write_quantized_checkpoint`` (a float checkpoint saved as a standard quantized one, the layers
  ``kept_float`` names left float; ``quantizable``: a layer bitsandbytes quantizes exactly),
  ``quantized_load_kwargs`` and ``prepare_quantized`` (loading one on CPU or CUDA, the AVX512-BF16
  repack trap closed), ``adapters_attached`` (while a Trainer is made: a quantized model with svdadapt's
  adapters is not "purely quantized"), ``quantization_of`` (what a checkpoint's config says), ``is_quantized_layer``,
  ``dequantized_weight`` and ``dequantize_model`` (a quantized layer or model as float32).
- the garbage collector (``collector.py``): ``collection_paused``, ``set_aside_live_objects``.
"""

from .collector import collection_paused, set_aside_live_objects

with collection_paused():  # torch: many long-lived objects, no garbage
    from .base_writer import BaseWriter, open_base_writer
    from .checkpoint import link_or_copy
    from .devices import resolve_device
    from .gram import mirror_upper
    from .hidden import HiddenStates
    from .kernels import Backend, on
    from .pages import hand_back
    from .placement import Placement, free_memory, on_compute, place
    from .processes import Launch, launch
    from .quantized import (
        QUANT_KINDS,
        adapters_attached,
        check_kernels,
        dequantize_model,
        dequantized_weight,
        is_quantized_layer,
        kept_float,
        prepare_quantized,
        quantizable,
        quantization_of,
        quantized_load_kwargs,
        require_bitsandbytes,
        write_quantized_checkpoint,
    )
    from .scheduling import LayerJob, LayerPool
    from .signals import stop_on_sigterm

__all__ = [
    "Backend",
    "BaseWriter",
    "HiddenStates",
    "LayerJob",
    "LayerPool",
    "Launch",
    "Placement",
    "QUANT_KINDS",
    "adapters_attached",
    "check_kernels",
    "dequantize_model",
    "dequantized_weight",
    "is_quantized_layer",
    "kept_float",
    "prepare_quantized",
    "quantizable",
    "quantization_of",
    "quantized_load_kwargs",
    "require_bitsandbytes",
    "write_quantized_checkpoint",
    "collection_paused",
    "free_memory",
    "hand_back",
    "launch",
    "link_or_copy",
    "mirror_upper",
    "on",
    "on_compute",
    "open_base_writer",
    "place",
    "resolve_device",
    "set_aside_live_objects",
    "stop_on_sigterm",
]
