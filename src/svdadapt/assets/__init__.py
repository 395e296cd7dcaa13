"""Embedded defaults that work with no hub access: models, texts and tiny test models."""

from .home import svdadapt_home
from .models import default_encoder_dir, default_model_dir
from .texts import news_text, polarity_examples, polarity_split, wiki_articles, wiki_text
from .tiny import TINY_KINDS, save_tiny_model, tiny_model, tiny_tokenizer

__all__ = [
    "TINY_KINDS",
    "default_encoder_dir",
    "default_model_dir",
    "news_text",
    "polarity_examples",
    "polarity_split",
    "save_tiny_model",
    "svdadapt_home",
    "tiny_model",
    "tiny_tokenizer",
    "wiki_articles",
    "wiki_text",
]
