"""Evaluation: perplexity on text, task metrics, and the lm-evaluation-harness bridge."""

from .perplexity import PerplexityResult, Windows, evaluation_windows, perplexity

__all__ = ["PerplexityResult", "Windows", "evaluation_windows", "perplexity"]
