"""Temporary alias of the old path (issue 13's move)."""

from adallava.engine.cache_slots import CacheSlots  # noqa: F401
from adallava.engine.stack import LayerInputs, call_layer, prepare_layer_inputs, select_rows  # noqa: F401
from adallava.engine.switches.head import run_layer_head_plan  # noqa: F401
from adallava.engine.switches.layer import run_layer_gated, run_layer_skipping  # noqa: F401
