"""Visual-token selection applied between the vision tower and the projector."""

from adallava.engine.tokens.prumerge import MergedTokens, prumerge, prumerge_plus

__all__ = ["MergedTokens", "prumerge", "prumerge_plus"]
