"""No pass keeps the mapped pages of a finished block: offloaded, whatever reads a weight (a block's
turn, a fingerprint, a check, a decomposition) hands its pages back through the back end's one
release owner (``svdadapt.backend.pages``), so the checkpoint's resident bytes stay about one
block's, whatever the number of blocks.

The resident bytes of the checkpoint's shard files (``Rss`` in /proc/self/smaps) are counted as
pages go back (the release owner's hook), all through calibrate, build from its store (calibrating
on the fly is calibrate's pass, then the same build) and compress with its evaluation windows, on
a sharded bfloat16 Llama of 6 blocks of ~5.8 MB each (hidden 512, intermediate 1376, 8 query and
4 key/value heads of 64).
The bound: two blocks (the one working and the one just finished, mid-release), the embedding,
and 1 MiB for the page cache's read-around at the edges of tensors. Without the fix (pages
handed back only after a block's turn) calibrate kept 33.6 MiB resident against a 12.6 MiB bound.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from svdadapt.backend import pages
from svdadapt.backend.placement import place
from svdadapt.cli import main

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/smaps").is_file(), reason="counts resident pages through /proc/self/smaps (Linux)"
)

BLOCKS = 6


@pytest.fixture(scope="module")
def sharded_llama(tiny_dirs, tmp_path_factory):
    """The tiny llama's config widened (hidden 512, intermediate 1376, 6 blocks), saved in bfloat16
    in 4 MB shards with the tiny tokenizer."""
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_dirs["llama"])
    shape = dict(hidden_size=512, intermediate_size=1376, num_attention_heads=8, num_key_value_heads=4, head_dim=64)
    config.update(dict(**shape, num_hidden_layers=BLOCKS))
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    path = tmp_path_factory.mktemp("sharded") / "llama"
    model.save_pretrained(path, safe_serialization=True, max_shard_size="4MB")
    for name in Path(tiny_dirs["llama"]).iterdir():
        if name.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(name, path / name.name)
    return path


def _block_bytes(model_dir: Path) -> tuple[int, int]:
    """(the largest block's stored bytes, the largest tensor outside the blocks)."""
    from safetensors import safe_open

    blocks: dict[str, int] = {}
    outside = 0
    for shard in model_dir.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is no dict)
                info = f.get_slice(key)
                nbytes = torch.Size(info.get_shape()).numel() * 2  # bfloat16
                if ".layers." in key:
                    block = key.split(".layers.")[1].split(".")[0]
                    blocks[block] = blocks.get(block, 0) + nbytes
                else:
                    outside = max(outside, nbytes)
    return max(blocks.values()), outside


EVERY = 4  # releases between two counts (a count reads /proc/self/smaps: ~25 ms); a kept page stays


@pytest.fixture
def resident_at_release(sharded_llama, monkeypatch):
    """The shards' resident bytes, recorded after every ``EVERY``-th page release of the pass (a list)."""
    shards = [str(p) for p in sharded_llama.glob("*.safetensors")]
    seen: list[int] = []
    calls = [0]
    release = pages.MappedPages.release

    def counted(self, tensor):
        handed = release(self, tensor)
        calls[0] += 1
        if calls[0] % EVERY == 0:
            seen.append(pages.resident_bytes(shards))
        return handed

    monkeypatch.setattr(pages.MappedPages, "release", counted)
    return seen


def common(model, out):
    return [
        "--model",
        str(model),
        "--device",
        "cpu",
        "--offload",
        "on",
        "--targets",
        "q_proj,up_proj",
        "--out",
        str(out),
    ]


def data(text_file):
    return ["--data", str(text_file), "--samples", "2", "--seq-len", "16", "--batch-size", "2"]


def test_the_checkpoint_is_sharded_and_auto_offloads_it(sharded_llama):
    assert len(list(sharded_llama.glob("*.safetensors"))) >= 4
    chosen = place(str(sharded_llama), "cpu", None)  # bfloat16 computed in float32: in place converts it all
    assert chosen.offloaded and "convert" in chosen.reason


def test_no_pass_keeps_a_finished_blocks_pages(sharded_llama, text_file, tmp_path, resident_at_release):
    block, outside = _block_bytes(sharded_llama)
    bound = 2 * block + outside + (1 << 20)
    total = sum(p.stat().st_size for p in sharded_llama.glob("*.safetensors"))
    assert bound < total / 2  # the bound tells one block from the whole model
    store = tmp_path / "store"
    build = ["build", "--method", "corda-kpa", "--rank", "4"]
    passes = {  # every block runs; only a few layers are decomposed, to keep it short
        "calibrate": ["calibrate", *common(sharded_llama, store), *data(text_file)],
        "build from a store": [*build, *common(sharded_llama, tmp_path / "b1"), "--covariances", str(store)],
        "compress": ["compress", *common(sharded_llama, tmp_path / "c"), "--decomposition", "plain", "--discard",
                     "8", "--eval", "news", "--seq-len", "16", "--max-windows", "2"],
    }  # fmt: skip
    for name, argv in passes.items():
        resident_at_release.clear()
        assert main(argv) == 0, name
        assert len(resident_at_release) >= BLOCKS, name  # counted all through the pass
        peak = max(resident_at_release)
        assert peak <= bound, f"{name}: {peak / 2**20:.1f} MiB of the checkpoint resident, bound {bound / 2**20:.1f}"
