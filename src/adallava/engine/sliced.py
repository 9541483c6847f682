"""Head and MLP-neuron switches (AdaLLaVA-H): unit geometry, sliced layers, and training gates.

A *head unit* is one KV group: the query heads that share one key/value head (plain multi-head
attention: one head). Switching a unit off removes its rows of q/k/v_proj and its columns of o_proj.
An *MLP group* is one of G contiguous slices of the intermediate size (the first I % G groups one
neuron larger); off removes its rows of gate/up_proj and its columns of down_proj.

Inference builds a `SlicedLayer` per distinct (layer, heads, groups) plan, once, and caches it: the
weights are sliced once per plan (and again only after the layer's weights change, see `SliceCache`),
never per decoded token. The sliced attention and MLP are shallow
clones of Hugging Face's own modules with smaller Linear layers, so the HF attention code (rotary,
KV cache, eager/SDPA kernels, GQA) runs unchanged. Training keeps full layers and multiplies each
unit's output by its (straight-through) switch via forward pre-hooks.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from adallava.core.geometry import UnitGeometry
from adallava.engine import hf_compat


def _sliced_linear(
    linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
) -> nn.Linear:
    weight = linear.weight
    if rows is not None:
        weight = weight.index_select(0, rows.to(weight.device))
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    bias = linear.bias
    if bias is not None and rows is not None:
        bias = bias.index_select(0, rows.to(bias.device))
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    out.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        out.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return out


def _clone(module: nn.Module) -> nn.Module:
    """A shallow clone whose child modules can be replaced without touching the original."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    return clone


class SlicedLayer(nn.Module):
    """A pre-norm decoder layer (Llama / Qwen2 / Mistral: h + attn(norm(h)); h + mlp(norm(h))) whose
    attention keeps only some head units and whose MLP keeps only some neuron groups. A part with
    nothing on is skipped, its residual branch is zero."""

    def __init__(
        self, layer: nn.Module, geometry: UnitGeometry, head_mask: torch.Tensor, mlp_mask: torch.Tensor
    ):
        super().__init__()
        for name in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
            if not hasattr(layer, name):
                raise TypeError(
                    f"{type(layer).__name__} has no `{name}`: head switches need a pre-norm decoder layer"
                )
        self.input_layernorm = layer.input_layernorm
        self.post_attention_layernorm = layer.post_attention_layernorm
        self.self_attn = None
        if bool(head_mask.any()):
            attn = _clone(layer.self_attn)
            q_rows, kv_rows = geometry.query_index(head_mask), geometry.kv_index(head_mask)
            attn.q_proj = _sliced_linear(layer.self_attn.q_proj, rows=q_rows)
            attn.k_proj = _sliced_linear(layer.self_attn.k_proj, rows=kv_rows)
            attn.v_proj = _sliced_linear(layer.self_attn.v_proj, rows=kv_rows)
            attn.o_proj = _sliced_linear(layer.self_attn.o_proj, cols=q_rows)
            self.self_attn = attn
        self.mlp = None
        if bool(mlp_mask.any()):
            mlp = _clone(layer.mlp)
            neurons = geometry.neuron_index(mlp_mask)
            for name in ("gate_proj", "up_proj"):
                setattr(mlp, name, _sliced_linear(getattr(layer.mlp, name), rows=neurons))
            mlp.down_proj = _sliced_linear(layer.mlp.down_proj, cols=neurons)
            self.mlp = mlp

    def forward(self, hidden, attention_mask=None, position_embeddings=None, position_ids=None,
                past_key_values=None, use_cache=False, cache_index: int | None = None):  # fmt: skip
        if self.self_attn is not None:
            hf_compat.set_cache_slot(self.self_attn, cache_index)  # this (layer, plan) group's KV slot
            attn_out, _ = self.self_attn(
                self.input_layernorm(hidden),
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **hf_compat.cache_kwargs(past_key_values if use_cache else None),
            )
            hidden = hidden + attn_out
        if self.mlp is not None:
            hidden = hidden + self.mlp(self.post_attention_layernorm(hidden))
        return hidden


def weights_fingerprint(layer: nn.Module) -> tuple:
    """A cheap stamp of a layer's parameters that changes whenever a sliced copy of them would be
    stale: a new storage (`load_state_dict(assign=True)`, a replaced module, a device move), a new
    dtype or device, or an in-place write (`copy_`, `add_`, optimizer steps bump `_version`). Read
    from the live layer, so replaced parameters and modules are seen too."""
    return tuple((p.data_ptr(), p.dtype, p.device, _version(p)) for p in layer.parameters())


def _version(tensor: torch.Tensor) -> int | None:
    # Inference tensors (made under torch.inference_mode) keep no version counter, so an in-place
    # write to one inside inference mode goes unseen here; a new storage, dtype or device still
    # changes the fingerprint, and AdaLlava's `_apply` / `load_state_dict` still clear the cache.
    return None if tensor.is_inference() else tensor._version


class SliceCache:
    """Sliced layers by (layer index, head mask, MLP mask); built on first use, then reused while the
    layer's weights are unchanged.

    A sliced layer holds *copies* of its layer's projection weights, outside the module tree, so
    nothing that later changes the source weights reaches them. Two guards keep an entry from
    outliving the weights it was cut from:
    - `AdaLlava` clears the cache in `_apply` (dtype and device moves: the copies would keep the
      old dtype/device), `train()` (the cloned attention keeps the training flag it was built with)
      and `load_state_dict`;
    - each entry keeps the `weights_fingerprint` of its layer and is rebuilt when it no longer
      matches, which also catches changes made any other way (an in-place edit under
      `torch.no_grad()`, an optimizer step, `load_state_dict` on a submodule).
    The check walks the layer's few parameters on each lookup; the weights are sliced again only
    when they changed, never per decoded token.
    """

    def __init__(self, max_entries: int = 256):
        self.max_entries = max_entries
        self._entries: dict[tuple, tuple[tuple, SlicedLayer]] = {}  # key -> (fingerprint, layer)

    def get(self, layer_index: int, layer: nn.Module, geometry: UnitGeometry, heads: torch.Tensor,
            mlp: torch.Tensor) -> SlicedLayer:  # fmt: skip
        key = (layer_index, tuple(heads.tolist()), tuple(mlp.tolist()))
        stamp = weights_fingerprint(layer)
        entry = self._entries.get(key)
        if entry is not None and entry[0] == stamp:
            return entry[1]
        # A new plan, or the layer's weights changed since this entry was cut: slice anew.
        self._entries.pop(key, None)
        if len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))  # oldest first
        sliced = SlicedLayer(layer, geometry, heads, mlp)
        self._entries[key] = (stamp, sliced)
        return sliced

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
