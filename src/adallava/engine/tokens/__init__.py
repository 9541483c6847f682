"""Visual-token selection applied between the vision tower and the projector."""

from adallava.engine.tokens.prumerge import SPATIAL_SAMPLINGS, MergedTokens, prumerge, prumerge_plus

__all__ = ["SPATIAL_SAMPLINGS", "MergedTokens", "prumerge", "prumerge_plus"]
