"""KV-cache slots for the row groups of head-switched layers."""

from __future__ import annotations

from adallava.engine import hf_compat


class CacheSlots:
    """KV-cache slots for row groups of head-switched layers.

    Rows of one layer that run different head units cannot share one cache tensor (their numbers of
    KV heads differ), so each (layer, plan group) gets a slot of its own beyond the model's N layers.
    Slots are handed out in a fixed order (layers in order, groups in sorted mask order), and the
    plan is fixed after prefill, so every decoding step finds its rows' entries in the same slot.
    """

    def __init__(self, cache, num_layers: int):
        self.cache, self.next = cache, num_layers

    def take(self, like_layer: int) -> int:
        index, self.next = self.next, self.next + 1
        if self.cache is not None:
            # A fresh slot of the same kind as the layer's own (e.g. a sliding window). The layer's own
            # slot is never written under head switches, so a copy of it is empty.
            hf_compat.add_cache_slot(self.cache, index, like_layer)
        return index
