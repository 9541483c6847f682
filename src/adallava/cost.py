"""Temporary alias of the old path (issue 13's move)."""

from adallava.core.cost.flops import (  # noqa: F401
    Bytes,
    Cost,
    LayerFlops,
    Part,
    decode_cost,
    decode_step_cost,
    head_unit_flops,
    layer_flops,
    layer_unit_flops,
    llm_prefill_flops,
    mlp_group_flops,
    prefill_cost,
)
from adallava.core.cost.shapes import ModelShape, ProjectorShape, TextShape, VisionShape  # noqa: F401
