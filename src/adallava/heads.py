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
from dataclasses import dataclass

import torch
from torch import nn

from adallava import hf_compat


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


class UnitGates:
    """Training: multiply each head unit's output (the input of o_proj) and each MLP group's neurons
    (the input of down_proj) by per-row switches, via forward pre-hooks on those projections.

    Use as a context manager around the forward pass; `set(layer_index, heads [B, H], mlp [B, G])`
    installs the switch values (floats carrying straight-through gradients) for one layer.
    """

    def __init__(self, layers: nn.ModuleList, geometry: UnitGeometry):
        self.layers, self.geometry = layers, geometry
        self._values: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list = []

    def set(self, layer_index: int, heads: torch.Tensor, mlp: torch.Tensor) -> None:
        self._values[layer_index] = (heads, mlp)

    def __enter__(self) -> UnitGates:
        for index, layer in enumerate(self.layers):
            self._handles.append(layer.self_attn.o_proj.register_forward_pre_hook(self._gate(index, 0)))
            self._handles.append(layer.mlp.down_proj.register_forward_pre_hook(self._gate(index, 1)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._values.clear()

    def _gate(self, layer_index: int, part: int):
        expand = self.geometry.head_channel_mask if part == 0 else self.geometry.neuron_mask

        def hook(module, args):
            if layer_index not in self._values:
                return None
            switches = self._values[layer_index][part]  # [B, H] or [B, G], floats
            (x,) = args  # [B, T, channels]
            return (x * expand(switches).to(x.dtype)[:, None, :],)

        return hook
