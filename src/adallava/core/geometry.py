"""Head and MLP-group geometry of a decoder layer: which query/KV channels a head unit owns,
which neurons an MLP group owns (pure index math, no weights)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def mlp_group_sizes(intermediate_size: int, groups: int) -> list[int]:
    """Neurons per MLP group: `groups` contiguous slices, the first I % G one neuron larger."""
    base, extra = divmod(intermediate_size, groups)
    return [base + (g < extra) for g in range(groups)]


@dataclass(frozen=True)
class UnitGeometry:
    """How a layer splits into switchable units."""

    num_heads: int  # query heads
    num_kv_heads: int  # = head units
    head_dim: int
    intermediate_size: int
    mlp_groups: int

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if not 1 <= self.mlp_groups <= self.intermediate_size:
            raise ValueError(
                f"mlp_groups must be in [1, {self.intermediate_size}] (the intermediate size), "
                f"got {self.mlp_groups}"
            )

    @property
    def head_units(self) -> int:
        return self.num_kv_heads

    @property
    def heads_per_unit(self) -> int:
        return self.num_heads // self.num_kv_heads

    def group_sizes(self) -> list[int]:
        return mlp_group_sizes(self.intermediate_size, self.mlp_groups)

    def query_index(self, head_mask: torch.Tensor) -> torch.Tensor:
        """Rows of q_proj (= columns of o_proj) of the units on. head_mask: bool [H] -> long [R]."""
        width = self.heads_per_unit * self.head_dim
        return (head_mask.nonzero().flatten()[:, None] * width + torch.arange(width)).flatten()

    def kv_index(self, head_mask: torch.Tensor) -> torch.Tensor:
        """Rows of k_proj / v_proj of the units on."""
        return (
            head_mask.nonzero().flatten()[:, None] * self.head_dim + torch.arange(self.head_dim)
        ).flatten()

    def neuron_index(self, mlp_mask: torch.Tensor) -> torch.Tensor:
        """Intermediate neurons of the MLP groups on. mlp_mask: bool [G] -> long [R]."""
        return self.neuron_mask(mlp_mask).nonzero().flatten()

    def neuron_mask(self, mlp_mask: torch.Tensor) -> torch.Tensor:
        """Expand group switches to neurons: [..., G] -> [..., I]."""
        sizes = torch.tensor(self.group_sizes(), device=mlp_mask.device)
        return mlp_mask.repeat_interleave(sizes, dim=-1)

    def head_channel_mask(self, head_mask: torch.Tensor) -> torch.Tensor:
        """Expand unit switches to o_proj input channels: [..., H] -> [..., heads * head_dim]."""
        return head_mask.repeat_interleave(self.heads_per_unit * self.head_dim, dim=-1)


def geometry_of(text_config, mlp_groups: int | None) -> UnitGeometry:
    num_heads = text_config.num_attention_heads
    num_kv = getattr(text_config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // num_heads
    return UnitGeometry(num_heads, num_kv, head_dim, text_config.intermediate_size, mlp_groups or num_kv)


