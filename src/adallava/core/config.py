"""AdaptiveConfig: how a Llava is made adaptive (switch kind, prefix depth, scheduler settings)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SWITCH_KINDS = ("layer", "head")
SELECTION_RULES = ("adallava", "official")
SCHEDULER_KINDS = ("probabilistic", "deterministic")
TOKEN_SELECTIONS = ("none", "prumerge", "prumerge+", "prumerge+offset")
"""'prumerge+' samples PruMerge+'s spatial patches from patch 0, as AdaLLaVA's code (and the official
*-prumerge-plus checkpoints); 'prumerge+offset' from int(step / 6), as LLaVA-PruMerge commit 9d6586e."""
OFFICIAL_TOKEN_SELECTIONS = ("none", "prumerge", "prumerge+")
"""The values of the authors' `token_selecting` (each maps to the token_selection of the same name)."""


@dataclass(frozen=True)
class AdaptiveConfig:
    """Settings of the adaptive part; the base model's own config is untouched.

    Fields resolved against the base model (None = default) are filled by `resolve(num_layers, ...)`.
    """

    switches: str = "layer"
    """'layer' (AdaLLaVA-L: one switch per upper layer) or 'head' (AdaLLaVA-H: heads and MLP groups)."""
    num_prefix_layers: int | None = None
    """P: layers 0..P-1 always run and feed the scheduler. Default N // 2."""
    rank: int = 8
    """AdaLLaVA-H only: heads (and MLP groups) per budget unit, as in the official checkpoints."""
    mlp_groups: int | None = None
    """AdaLLaVA-H only: MLP neuron groups per layer. Default: the number of head units."""
    tau: float = 5.0
    """Gumbel-softmax temperature used when sampling plans in training (paper's code: 5)."""
    latency_frequencies: int = 128
    """Sinusoidal frequencies of the latency encoder (official: 128, i.e. 256 features)."""
    selection: str = "adallava"
    """'adallava' (take units in scheduler order, each one that still fits) or 'official' (the authors'
    rule)."""
    token_selection: str = "none"
    """Visual token selection before the LLM: 'none', 'prumerge', 'prumerge+' (spatial samples from
    patch 0, as AdaLLaVA's code) or 'prumerge+offset' (from int(step / 6), as LLaVA-PruMerge 9d6586e)."""
    scheduler: str = "probabilistic"
    """'probabilistic' (the paper's method: plans sampled within the budget) or 'deterministic' (the
    ablation of Sec. 3.3 / Table 2: hard plans from thresholded switch probabilities, trained with
    NLL + latency_loss_weight * (cost / full cost - budget)^2; it may violate budgets)."""
    latency_loss_weight: float = 1.0
    """lambda of the deterministic scheduler's latency loss."""

    def __post_init__(self) -> None:
        if self.switches not in SWITCH_KINDS:
            raise ValueError(f"AdaptiveConfig.switches must be one of {SWITCH_KINDS}, got {self.switches!r}")
        if self.num_prefix_layers is not None and self.num_prefix_layers < 1:
            raise ValueError(
                "AdaptiveConfig.num_prefix_layers must be >= 1 (layer 0 always runs), "
                f"got {self.num_prefix_layers}"
            )
        if self.rank < 1:
            raise ValueError(f"AdaptiveConfig.rank must be >= 1, got {self.rank}")
        if self.mlp_groups is not None and self.mlp_groups < 1:
            raise ValueError(f"AdaptiveConfig.mlp_groups must be >= 1, got {self.mlp_groups}")
        if not self.tau > 0:
            raise ValueError(f"AdaptiveConfig.tau must be > 0, got {self.tau}")
        if self.latency_frequencies < 1:
            raise ValueError(
                f"AdaptiveConfig.latency_frequencies must be >= 1, got {self.latency_frequencies}"
            )
        if self.selection not in SELECTION_RULES:
            raise ValueError(
                f"AdaptiveConfig.selection must be one of {SELECTION_RULES}, got {self.selection!r}"
            )
        if self.scheduler not in SCHEDULER_KINDS:
            raise ValueError(
                f"AdaptiveConfig.scheduler must be one of {SCHEDULER_KINDS}, got {self.scheduler!r}"
            )
        if not self.latency_loss_weight >= 0:
            raise ValueError(
                f"AdaptiveConfig.latency_loss_weight must be >= 0, got {self.latency_loss_weight}"
            )
        if self.token_selection not in TOKEN_SELECTIONS:
            raise ValueError(
                f"AdaptiveConfig.token_selection must be one of {TOKEN_SELECTIONS}, "
                f"got {self.token_selection!r}"
            )

    def resolve(self, num_layers: int) -> AdaptiveConfig:
        """Fill defaults that depend on the base model and check P against its depth N."""
        prefix = num_layers // 2 if self.num_prefix_layers is None else self.num_prefix_layers
        if not 1 <= prefix < num_layers:
            raise ValueError(
                f"AdaptiveConfig.num_prefix_layers must be in [1, {num_layers - 1}] for a {num_layers}-layer "
                f"model, got {prefix}"
            )
        return dataclasses.replace(self, num_prefix_layers=prefix)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptiveConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AdaptiveConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)
