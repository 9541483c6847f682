"""The math of one pre-norm decoder layer (Llama, Qwen2, Mistral), as pure functions of tensors.

The lean engine computes decoder layers with these functions from the Hugging Face modules' own
parameters (`weights.LayerWeights`), instead of calling the modules: the same arithmetic with none
of the per-call framework work (argument parsing, output dataclasses, mask and cache objects). The
formulas are those of the HF Llama implementation (RMSNorm in float32, rotary embedding by
rotate-half, scaled dot-product attention, gated MLP); `tests/engine/lean/` checks them against HF's
own layers and `tests/parity/` against HF `generate`.

Shapes: B rows, T new tokens, S keys (cache included), Hq query heads, Hkv key/value heads, Dh head
size, D hidden size.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from adallava.engine.lean.weights import LayerWeights


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama RMSNorm: x / sqrt(mean(x^2) + eps) computed in float32, scaled by `weight` in the
    input's dtype (LlamaRMSNorm.forward)."""
    if hidden.dtype == torch.float32:
        return hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True).add_(eps)) * weight
    x = hidden.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))
    return weight * x.to(hidden.dtype)


def rotary_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, signed sin) for `apply_rotary`: rotate_half(x) * sin, with rotate_half(x) = [-x2, x1],
    equals roll(x, half) * [-sin1, sin2], one roll instead of two slices, a negation and a cat."""
    half = sin.shape[-1] // 2
    return cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (HF's rotate-half form): x * cos + rotate_half(x) * sin.
    x: [B, H, T, Dh]; cos, signed_sin (from `rotary_tables`): [B, 1, T, Dh]."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def projections(x: torch.Tensor, weights, biases, sizes) -> tuple[torch.Tensor, ...]:
    """Several projections of x: one matmul on their concatenated weights (a tensor) and a split, or
    one matmul each (a tuple of weights; see `weights.FUSE_LIMIT_BYTES`)."""
    if isinstance(weights, torch.Tensor):
        return linear(x, weights, biases).split(sizes, dim=-1)
    return tuple(linear(x, weight, bias) for weight, bias in zip(weights, biases, strict=True))


def attention_block(
    w: LayerWeights,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    start: int,
    mask: torch.Tensor | None,
    causal: bool,
) -> torch.Tensor:
    """Self-attention of `hidden` [B, T, D] (already normed) writing its keys and values into the
    preallocated cache `keys`/`values` [B, Hkv, L, Dh] at positions start..start+T-1 and attending
    to positions 0..start+T-1. cos, sin: from `rotary_tables`, [B, 1, T, Dh]. mask: bool
    [B, 1, T, S] (True: attend) or None (every key; `causal` then applies the causal rule among the T
    new tokens). Returns the o_proj output [B, T, D]."""
    batch, length, _ = hidden.shape
    q, k, v = projections(hidden, w.qkv, w.qkv_bias, w.qkv_sizes)  # [B, T, H Dh] each
    q = apply_rotary(q.view(batch, length, -1, w.head_dim).transpose(1, 2), cos, sin)  # [B, Hq, T, Dh]
    k = apply_rotary(k.view(batch, length, -1, w.head_dim).transpose(1, 2), cos, sin)  # [B, Hkv, T, Dh]
    v = v.view(batch, length, -1, w.head_dim).transpose(1, 2)
    end = start + length
    keys.narrow(2, start, length).copy_(k)
    values.narrow(2, start, length).copy_(v)
    out = F.scaled_dot_product_attention(
        q,
        keys.narrow(2, 0, end),
        values.narrow(2, 0, end),
        attn_mask=mask,
        is_causal=causal and mask is None and length > 1,
        scale=w.scaling,
        enable_gqa=w.grouped,
    )  # [B, Hq, T, Dh]
    return linear(out.transpose(1, 2).reshape(batch, length, -1), w.o, w.o_bias)


def mlp_block(w: LayerWeights, hidden: torch.Tensor) -> torch.Tensor:
    """Gated MLP: down(act(gate(x)) * up(x)) on normed `hidden` [B, T, D]."""
    gate, up = projections(hidden, w.gate_up, w.gate_up_bias, w.gate_up_sizes)
    return linear(w.act(gate) * up, w.down, w.down_bias)


def decoder_layer(
    w: LayerWeights,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor | None,
    values: torch.Tensor | None,
    start: int,
    mask: torch.Tensor | None,
    causal: bool,
) -> torch.Tensor:
    """h + attn(norm(h)), then h + mlp(norm(h)); a part whose units are all off (head plans) adds
    nothing. hidden: [B, T, D] -> [B, T, D]."""
    if w.qkv is not None:
        normed = rms_norm(hidden, w.input_norm, w.eps)
        hidden = hidden + attention_block(w, normed, cos, sin, keys, values, start, mask, causal)
    if w.gate_up is not None:
        hidden = hidden + mlp_block(w, rms_norm(hidden, w.post_norm, w.eps))
    return hidden
