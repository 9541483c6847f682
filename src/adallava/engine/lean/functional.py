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
    input's dtype (LlamaRMSNorm.forward). Written out in five ops: on CPU, torch's `rms_norm` runs the
    same ops behind two more dispatch levels."""
    if hidden.dtype == torch.float32:
        return hidden * hidden.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_() * weight
    x = hidden.float()
    x = x * x.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()
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


def add_linear(residual: torch.Tensor, x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None):
    """residual + x @ weight_t (+ bias) in one matmul-accumulate: an nn.Linear whose weight is given
    transposed, added to the residual stream. residual [N, out], x [N, in], weight_t [in, out]."""
    out = torch.addmm(residual, x, weight_t)
    return out if bias is None else out.add_(bias)


def projections(x: torch.Tensor, weights, biases, sizes) -> tuple[torch.Tensor, ...]:
    """Several projections of x: one matmul on their concatenated weights (a tensor) and a split, or
    one matmul each (a tuple of weights; see `weights.FUSE_LIMIT_BYTES`)."""
    if isinstance(weights, torch.Tensor):
        return F.linear(x, weights, biases).split(sizes, dim=-1)
    return tuple(F.linear(x, weight, bias) for weight, bias in zip(weights, biases, strict=True))


def _heads(w: LayerWeights, normed: torch.Tensor, batch: int, length: int, cos, sin):
    """q [B, Hq, T, Dh], k, v [B, Hkv, T, Dh] of normed [B*T, D], rotary applied to q and k (both at
    once when the projections are fused: they are neighbours in one tensor)."""
    q_size, kv_size, _ = w.qkv_sizes
    if isinstance(w.qkv, torch.Tensor):
        qkv = F.linear(normed, w.qkv, w.qkv_bias).view(batch, length, -1, w.head_dim).transpose(1, 2)
        q_heads, kv_heads = q_size // w.head_dim, kv_size // w.head_dim
        qk = apply_rotary(qkv.narrow(1, 0, q_heads + kv_heads), cos, sin)
        return (
            qk.narrow(1, 0, q_heads),
            qk.narrow(1, q_heads, kv_heads),
            qkv.narrow(1, q_heads + kv_heads, kv_heads),
        )
    q, k, v = (
        t.view(batch, length, -1, w.head_dim).transpose(1, 2)
        for t in projections(normed, w.qkv, w.qkv_bias, w.qkv_sizes)
    )
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


def attention_block(
    w: LayerWeights,
    normed: torch.Tensor,
    batch: int,
    length: int,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    start: int,
    mask: torch.Tensor | None,
    causal: bool,
    write_at: torch.Tensor | None = None,
) -> torch.Tensor:
    """Self-attention of `normed` [B*T, D] (the normed hidden states of B rows of T tokens) writing
    its keys and values into the preallocated cache `keys`/`values` [B, Hkv, L, Dh] at positions
    start..start+T-1 and attending to positions 0..start+T-1. cos, sin: from `rotary_tables`,
    [B, 1, T, Dh]. mask: bool [B, 1, T, S] (True: attend) or None (every key; `causal` then applies
    the causal rule among the T new tokens). Static shapes (compiled decoding): `write_at` long [T]
    holds the cache positions to write, and every one of the cache's L positions is attended to under
    `mask` [B, 1, T, L] (positions not yet written must be masked). Returns the heads' outputs
    [B*T, Hq*Dh] (before o_proj)."""
    q, k, v = _heads(w, normed, batch, length, cos, sin)
    if write_at is None:
        end = start + length
        keys.narrow(2, start, length).copy_(k)
        values.narrow(2, start, length).copy_(v)
        keys, values = keys.narrow(2, 0, end), values.narrow(2, 0, end)
    else:
        keys.index_copy_(2, write_at, k)
        values.index_copy_(2, write_at, v)
    out = F.scaled_dot_product_attention(
        q,
        keys,
        values,
        attn_mask=mask,
        is_causal=causal and mask is None and length > 1,
        scale=w.scaling,
        enable_gqa=w.grouped,
    )  # [B, Hq, T, Dh]
    return out.transpose(1, 2).reshape(batch * length, -1)


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
    write_at: torch.Tensor | None = None,
) -> torch.Tensor:
    """h + o_proj(attn(norm(h))), then h + down(act(gate(norm(h))) * up(norm(h))); a part whose
    units are all off (head plans) adds nothing. hidden: [B, T, D] -> [B, T, D]. `write_at`: see
    `attention_block` (static shapes)."""
    batch, length, size = hidden.shape
    flat = hidden.reshape(batch * length, size)
    if w.qkv is not None:
        normed = rms_norm(flat, w.input_norm, w.eps)
        heads = attention_block(
            w, normed, batch, length, cos, sin, keys, values, start, mask, causal, write_at
        )
        flat = add_linear(flat, heads, w.o_t, w.o_bias)
    if w.gate_up is not None:
        gate, up = projections(rms_norm(flat, w.post_norm, w.eps), w.gate_up, w.gate_up_bias, w.gate_up_sizes)
        flat = add_linear(flat, w.act(gate) * up, w.down_t, w.down_bias)
    return flat.view(batch, length, size)
