"""Synthetic models for benchmarks: random weights in a real architecture's shape, written as a
safetensors checkpoint sharded like the hub's (``model-0000k-of-0000n.safetensors`` and an index),
with a tokenizer, so that sizes far beyond the embedded model can be measured offline. Identity and
accuracy claims stay on real models; these only measure time and memory.

    python benchmarks/synthetic.py --shape llama-1.1b --dtype float32 --out /tmp/llama-1.1b

Tensors are generated and written one shard at a time (at most ``--shard-gib`` of them in memory).
``--spectrum α`` gives each 2-D weight singular values ∝ i^-α (random singular vectors, the same
Frobenius norm as the i.i.d. draw) instead of i.i.d. N(0, 0.02²)'s flat spectrum: a decaying
spectrum as trained weights have (benchmarks/quantize.py uses α = 0.35 on ``llama-small``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

# Llama shapes: TinyLlama-1.1B's and Llama-2-7B's
SHAPES = {
    "llama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                       num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "llama-small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                        num_key_value_heads=4, vocab_size=512, max_position_embeddings=512),
    "llama-tiny": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=512, max_position_embeddings=256),
}  # fmt: skip


def write_model(
    shape: str, out: Path, dtype: str = "float32", shard_gib: float = 2.0, seed: int = 0, layers: int | None = None,
    spectrum: float = 0.0,
) -> Path:  # fmt: skip
    """Write a Llama model of ``shape`` (``layers`` blocks if given) with random weights to ``out``
    (created); ``spectrum`` α > 0: linear weights with singular values ∝ i^-α. Returns ``out``."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from svdadapt.assets import tiny_tokenizer

    sizes = SHAPES[shape] | ({"num_hidden_layers": layers} if layers else {})
    config = LlamaConfig(**sizes, tie_word_embeddings=False, dtype=dtype)
    out.mkdir(parents=True, exist_ok=False)
    with torch.device("meta"):
        names = {k: (tuple(v.shape), "norm" in k) for k, v in LlamaForCausalLM(config).state_dict().items()}
    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(seed)
    limit = shard_gib * 2**30
    shards: list[list[str]] = [[]]
    size = 0
    for name, (tensor_shape, _) in names.items():
        nbytes = math.prod(tensor_shape) * torch_dtype.itemsize
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map, total = {}, 0
    for index, keys in enumerate(shards, 1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for key in keys:
            tensor_shape, norm = names[key]
            value = torch.ones(tensor_shape) if norm else torch.randn(tensor_shape, generator=generator) * 0.02
            if spectrum > 0 and len(tensor_shape) == 2 and ".layers." in key:
                value = with_spectrum(value, spectrum)
            tensors[key] = value.to(torch_dtype)
            weight_map[key] = file
            total += tensors[key].numel() * torch_dtype.itemsize
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        del tensors
    index_file = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=2))
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(out)
    tokenizer = tiny_tokenizer()
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out)
    return out


def with_spectrum(W, alpha: float):
    """W's singular vectors with singular values ∝ i^-α, at W's Frobenius norm (out, in)."""
    import torch

    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    decay = torch.arange(1, S.shape[0] + 1, dtype=torch.float64) ** -alpha  # (k,)
    decay *= S.norm() / decay.norm()
    return ((U * decay) @ Vh).to(W.dtype)


def parameters(shape: str) -> int:
    """The parameter count of a shape (without building it)."""
    s = SHAPES[shape]
    h, i, n, v = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"], s["vocab_size"]
    kv = h * s["num_key_value_heads"] // s["num_attention_heads"]
    block = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return n * block + 2 * v * h + h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="llama-1.1b")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--shard-gib", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, help="blocks (default: the shape's)")
    parser.add_argument("--spectrum", type=float, default=0.0, help="singular values ∝ i^-SPECTRUM (0: i.i.d.)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    write_model(args.shape, args.out, args.dtype, args.shard_gib, args.seed, args.layers, args.spectrum)
    print(f"{args.shape}: {parameters(args.shape) / 1e9:.2f} B parameters ({args.dtype}) in {args.out}")


if __name__ == "__main__":
    main()
