"""Tiny random models built in code, for fast tests: Llama-, BERT- and GPT-2-style (Conv1D layers).

Each has 2 blocks and a 512-token byte-level BPE tokenizer trained on the bundled news text, and
is deterministic for a given seed. Shapes are chosen so that some layers have in > out and others
in < out.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ..errors import SvdadaptError, unknown

TINY_VOCAB = 512
TINY_KINDS = ("llama", "bert", "gpt2")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


@lru_cache(maxsize=1)
def _trained_tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from .texts import news_text

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(news_text().split("\n\n"), trainer=trainer)
    return tok.to_str()


def tiny_tokenizer():
    """A 512-token byte-level BPE tokenizer with <s>, </s>, <pad> and a minimal chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json()),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 256
    return tokenizer


def _ids() -> dict:
    return {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def tiny_config(kind: str):
    from transformers import BertConfig, GPT2Config, LlamaConfig

    if kind == "llama":
        return LlamaConfig(
            vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            tie_word_embeddings=False, **_ids(),
        )  # fmt: skip
    if kind == "bert":
        return BertConfig(
            vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=256, **_ids(),
        )  # fmt: skip
    if kind == "gpt2":
        return GPT2Config(vocab_size=TINY_VOCAB, n_embd=64, n_inner=96, n_layer=2, n_head=4, n_positions=256, **_ids())
    raise unknown("tiny model", kind, TINY_KINDS)


_CLASSES = {  # (kind, head) -> transformers class name
    ("llama", "auto"): "LlamaForCausalLM",
    ("bert", "auto"): "BertModel",
    ("bert", "seq-cls"): "BertForSequenceClassification",
    ("gpt2", "auto"): "GPT2LMHeadModel",
}


def tiny_model(kind: str, seed: int = 0, head: str = "auto", dtype: torch.dtype = torch.float32) -> nn.Module:
    """A freshly initialised tiny model (deterministic for ``seed``), in eval mode."""
    import transformers

    config = tiny_config(kind)
    if (kind, head) not in _CLASSES:
        raise SvdadaptError(f"tiny {kind} model has no {head!r} head")
    cls = getattr(transformers, _CLASSES[(kind, head)])
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = cls(config).to(dtype)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def save_tiny_model(kind: str, path: str | Path, seed: int = 0, head: str = "auto") -> Path:
    """Write a tiny model and its tokenizer as an ordinary model directory."""
    path = Path(path)
    tiny_model(kind, seed=seed, head=head).save_pretrained(path, safe_serialization=True)
    tiny_tokenizer().save_pretrained(path)
    return path
