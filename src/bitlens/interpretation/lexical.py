"""Lexical baseline (no LLM): lives in ``analysis/lexical.py`` since issue 14, so the coder sweep (experiments) can
score every point with it; re-exported here for the interpretation pipeline."""

from ..analysis.lexical import LEXICAL_F1, best_token_set

__all__ = ["LEXICAL_F1", "best_token_set"]
