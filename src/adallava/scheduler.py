"""Temporary alias of the old path (issue 13's move)."""

from adallava.core.selection import (  # noqa: F401
    FIT_TOLERANCE,
    fit_in_order,
    greedy_mask,
    gumbel_noise,
    gumbel_topk_mask,
    official_head_selection,
    sample_fit_straight_through,
    sample_mask_straight_through,
)
from adallava.modules.scheduler_head import SchedulerHead  # noqa: F401
