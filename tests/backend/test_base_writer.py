"""The writer of a run's base: streamed into a copy of the checkpoint, the same files save_pretrained
writes, used only when the checkpoint is verifiably the loaded model, and pages handed back to the OS."""

import json
import platform
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from svdadapt.backend import base_writer, checkpoint
from svdadapt.backend.base_writer import SavedBase, StreamedBase
from svdadapt.backend.pages import drop_file_pages, drop_mapped_pages, file_mappings
from svdadapt.models import load_model
from svdadapt.targets import find_targets

from ..helpers import make_run

LINUX = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _spy_writer(monkeypatch, streaming: bool) -> list:
    """Record the writers a build opens (or make streaming decline, as for an unverifiable checkpoint)."""
    opened = []
    original = base_writer.open_base_writer
    if not streaming:
        monkeypatch.setattr(base_writer, "streamable", lambda *args: None)

    def spy(*args, **kwargs):
        opened.append(original(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr("svdadapt.backend.open_base_writer", spy)
    return opened


@pytest.mark.parametrize("kind", ["llama", "gpt2"])  # gpt2: Conv1D weights stored (in, out)
def test_streamed_base_is_what_save_pretrained_writes(kind, tiny_dirs, text_file, tmp_path, monkeypatch):
    opened = _spy_writer(monkeypatch, streaming=True)
    run = make_run(tiny_dirs, text_file, tmp_path / "streamed", kind)
    assert isinstance(opened[-1], StreamedBase)  # the tiny checkpoint is the model: streaming was used
    opened = _spy_writer(monkeypatch, streaming=False)
    saved = make_run(tiny_dirs, text_file, tmp_path / "saved", kind)
    assert isinstance(opened[-1], SavedBase)

    a = load_file(str(run.path / "base" / "model.safetensors"))
    b = load_file(str(saved.path / "base" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        if (saved.path / "base" / name).is_file():
            assert json.loads((run.path / "base" / name).read_text()) == json.loads(
                (saved.path / "base" / name).read_text()
            ), name
    assert run.meta["base_fingerprint"] == saved.meta["base_fingerprint"]
    run.load_base()  # the fingerprint recorded is the one the written base loads with


def _keys(model) -> list[str]:
    return [f"{name}.weight" for name in find_targets(model, None)]


def _start(model_dir, tmp_path, **load_kwargs):
    loaded = load_model(str(model_dir), **load_kwargs)
    streamed = base_writer.streamable(loaded.model, loaded.location, _keys(loaded.model))
    if streamed is not None:
        streamed.start(tmp_path / "base")
    return loaded, streamed


def test_a_checkpoint_that_is_not_the_loaded_model_is_not_streamed(tiny_dirs, tmp_path):
    loaded, streamed = _start(tiny_dirs["llama"], tmp_path / "ok")
    assert streamed is not None

    # weights changed in memory after loading: the file no longer holds them
    loaded = load_model(str(tiny_dirs["llama"]))
    with torch.no_grad():
        loaded.model.model.layers[0].mlp.up_proj.weight.mul_(2)
    assert base_writer.streamable(loaded.model, loaded.location, _keys(loaded.model)) is None

    # a new classification head is not in the checkpoint
    assert _start(tiny_dirs["bert"], tmp_path / "head", head="seq-cls", num_labels=3)[1] is None

    # stored in bfloat16, loaded as float32: save_pretrained would write float32
    bf16 = tmp_path / "bf16"
    bf16.mkdir()
    for path in tiny_dirs["llama"].iterdir():
        (bf16 / path.name).write_bytes(path.read_bytes())
    tensors = load_file(str(bf16 / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(bf16 / "model.safetensors"))
    assert _start(bf16, tmp_path / "cast")[1] is None
    assert not (tmp_path / "changed").exists() and not (tmp_path / "cast").exists()  # nothing written


def test_slots_read_from_the_header_locate_each_tensor(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(5, dtype=torch.bfloat16)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    slots = checkpoint.read_slots(tmp_path / "model.safetensors")
    raw = (tmp_path / "model.safetensors").read_bytes()
    for key, tensor in tensors.items():
        slot = slots[key]
        assert slot.shape == tuple(tensor.shape) and slot.dtype == tensor.dtype
        stored = torch.frombuffer(bytearray(raw[slot.offset : slot.offset + slot.nbytes]), dtype=slot.dtype)
        assert torch.equal(stored.reshape(tensor.shape), tensor)


def _rss_file_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("RssFile:")).split()[1])


@pytest.mark.skipif(not LINUX, reason="page release uses Linux's /proc and madvise")
def test_pages_of_a_clean_private_mapping_go_back_and_read_the_same(tmp_path):
    path = tmp_path / "weights.bin"
    values = torch.randn(8 << 20)  # 32 MiB
    path.write_bytes(values.numpy().tobytes())
    mapped = torch.from_file(str(path), shared=False, size=values.numel(), dtype=torch.float32)
    assert torch.equal(mapped, values)  # read in: resident
    ranges = file_mappings([str(path)], clean_only=True)
    assert len(ranges) == 1
    before = _rss_file_kib()
    assert drop_file_pages(ranges) >= 32 << 20
    assert _rss_file_kib() < before - 24 * 1024  # most of the 32 MiB left this process
    assert torch.equal(mapped, values)  # and reads fault the same values back in

    part = mapped[1000:3_000_000]
    assert drop_mapped_pages(part, ranges) > 10 << 20
    assert drop_mapped_pages(torch.randn(10), ranges) == 0  # heap memory is never touched
    assert torch.equal(mapped, values)

    mapped[0] = 1.0  # written: a copy-on-write page the file does not hold
    assert file_mappings([str(path)], clean_only=True) == []
    assert file_mappings([str(path)]) == ranges


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_copy_except_leaves_only_the_holes_unwritten(kernel_copy, tmp_path, monkeypatch):
    if not kernel_copy:  # e.g. across file systems on an old kernel: the buffered path
        monkeypatch.setattr(checkpoint.os, "copy_file_range", lambda *a: (_ for _ in ()).throw(OSError(18, "EXDEV")))
        monkeypatch.setattr(checkpoint, "COPY_CHUNK", 1000)
    source = tmp_path / "source.bin"
    data = bytes(range(256)) * 40  # 10240 bytes
    source.write_bytes(data)
    holes = [checkpoint.Slot("source.bin", 5000, (250,), torch.float32), checkpoint.Slot("x", 16, (3,), torch.int8)]
    checkpoint.copy_except(source, tmp_path / "target.bin", holes)
    copied = (tmp_path / "target.bin").read_bytes()
    assert len(copied) == len(data)
    assert copied[16:19] == b"\0" * 3 and copied[5000:6000] == b"\0" * 1000
    assert copied[:16] == data[:16] and copied[19:5000] == data[19:5000] and copied[6000:] == data[6000:]


def test_finishing_with_a_target_never_written_is_an_error(tiny_dirs, tmp_path):
    loaded, streamed = _start(tiny_dirs["llama"], tmp_path)
    with pytest.raises(RuntimeError, match="never written"):
        streamed.finish(loaded.model, loaded.tokenizer)


def test_freed_heap_memory_is_handed_back_on_glibc():
    import platform
    import sys

    from svdadapt.backend.pages import release_freed_memory

    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert release_freed_memory() is expected
