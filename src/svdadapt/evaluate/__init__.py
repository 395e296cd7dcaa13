"""Evaluation: perplexity on text, task metrics, and the lm-evaluation-harness bridge."""

from .perplexity import PerplexityResult, Windows, evaluation_windows, perplexity, streamed_perplexity
from .suite import evaluate_model

__all__ = ["PerplexityResult", "Windows", "evaluate_model", "evaluation_windows", "perplexity", "streamed_perplexity"]
