"""The parameters of a decoder layer as the lean engine reads them, and which models it can run.

`LayerWeights` holds references to a Hugging Face layer's own parameters (the modules stay the
source of weights and config): norms, attention and MLP projections. Where a layer is small, its
q/k/v and gate/up projections are concatenated once (one matmul instead of three or two: per-op
overhead dominates small layers); that copy is bounded by `FUSE_LIMIT_BYTES` per layer, so a 7B
model's layers are used in place. Copies follow the weights: each cache entry keeps the layer's
`weights_fingerprint` and is rebuilt when it changes (as the sliced head-plan layers are).

Module and attribute names read here (`input_layernorm.weight`, `variance_epsilon`,
`self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`, `mlp.act_fn`, `self_attn.scaling`,
`head_dim`) are those of the Llama, Qwen2 and Mistral implementations of transformers 5.15-5.25 and
of their checkpoints' keys.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")  # tables that do not depend on the length
FUSE_LIMIT_BYTES = 32 * 2**20  # concatenate a layer's projections when their copy stays below this


@dataclass(frozen=True)
class LayerWeights:
    """A pre-norm decoder layer's parameters. `qkv` / `gate_up`: one concatenated weight, or a tuple
    of the separate ones (with `*_bias` alike); None when the part is switched off (head plans)."""

    input_norm: torch.Tensor
    post_norm: torch.Tensor
    eps: float
    qkv: torch.Tensor | tuple | None
    qkv_bias: torch.Tensor | tuple | None
    qkv_sizes: tuple[int, int, int]
    o_t: torch.Tensor | None  # o_proj.weight transposed (a view): [Hq*Dh, D], for addmm
    o_bias: torch.Tensor | None
    gate_up: torch.Tensor | tuple | None
    gate_up_bias: torch.Tensor | tuple | None
    gate_up_sizes: tuple[int, int]
    down_t: torch.Tensor | None  # down_proj.weight transposed (a view): [I, D]
    down_bias: torch.Tensor | None
    act: Callable[[torch.Tensor], torch.Tensor]
    head_dim: int
    scaling: float
    num_kv_heads: int  # 0 when attention is off
    grouped: bool  # fewer key/value heads than query heads (GQA)


def _bias(linear: nn.Linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.detach()


def _concatenate(linears: list[nn.Linear], fuse: bool):
    weights = [linear.weight.detach() for linear in linears]
    biases = [_bias(linear) for linear in linears]
    if not fuse:
        return tuple(weights), tuple(biases)
    bias = (
        None
        if all(b is None for b in biases)
        else torch.cat(
            [b if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(weights, biases, strict=True)]
        )
    )
    return torch.cat(weights), bias


def read_layer(layer: nn.Module) -> LayerWeights:
    """The parameters of an HF decoder layer, or of a `SlicedLayer` (head plan; an attention or MLP
    with every unit off is None there)."""
    attn, mlp = layer.self_attn, layer.mlp
    linears = [getattr(attn, n) for n in ("q_proj", "k_proj", "v_proj")] if attn is not None else []
    linears += [getattr(mlp, n) for n in ("gate_proj", "up_proj")] if mlp is not None else []
    fuse = sum(linear.weight.numel() * linear.weight.element_size() for linear in linears) <= FUSE_LIMIT_BYTES
    head_dim = attn.head_dim if attn is not None else 1
    qkv = qkv_bias = o = o_bias = None
    sizes = (0, 0, 0)
    if attn is not None:
        qkv, qkv_bias = _concatenate(linears[:3], fuse)
        sizes = tuple(linear.weight.shape[0] for linear in linears[:3])
        o, o_bias = attn.o_proj.weight.detach().t(), _bias(attn.o_proj)
    gate_up = gate_up_bias = down = down_bias = None
    mlp_sizes = (0, 0)
    if mlp is not None:
        gate_up, gate_up_bias = _concatenate([mlp.gate_proj, mlp.up_proj], fuse)
        mlp_sizes = (mlp.gate_proj.weight.shape[0], mlp.up_proj.weight.shape[0])
        down, down_bias = mlp.down_proj.weight.detach().t(), _bias(mlp.down_proj)
    kv_heads = sizes[1] // head_dim
    return LayerWeights(
        input_norm=layer.input_layernorm.weight.detach(),
        post_norm=layer.post_attention_layernorm.weight.detach(),
        eps=float(layer.input_layernorm.variance_epsilon),
        qkv=qkv,
        qkv_bias=qkv_bias,
        qkv_sizes=sizes,
        o_t=o,
        o_bias=o_bias,
        gate_up=gate_up,
        gate_up_bias=gate_up_bias,
        gate_up_sizes=mlp_sizes,
        down_t=down,
        down_bias=down_bias,
        act=mlp.act_fn if mlp is not None else torch.nn.functional.silu,
        head_dim=head_dim,
        scaling=float(attn.scaling) if attn is not None else 1.0,
        num_kv_heads=kv_heads,
        grouped=kv_heads > 0 and sizes[0] != sizes[1],
    )


WEIGHT_MODULES = (
    "input_layernorm", "post_attention_layernorm", "self_attn", "self_attn.q_proj", "self_attn.k_proj",
    "self_attn.v_proj", "self_attn.o_proj", "mlp", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)  # fmt: skip
WEIGHT_PATHS = tuple(tuple(path.split(".")) for path in WEIGHT_MODULES)


def layer_modules(layer: nn.Module) -> tuple:
    """The modules of a layer that hold the weights the lean engine reads (None where a sliced
    head-plan layer has no attention or MLP): replacing one (an adapter wrapping q_proj, a new
    Linear) changes this tuple's identities."""
    found = []
    for path in WEIGHT_PATHS:
        module = layer
        for name in path:  # submodules live in `_modules` (nn.Module.__getattr__ is slow Python)
            module = module._modules.get(name) if module is not None else None
        found.append(module)
    return tuple(found)


def _stamp(modules: tuple) -> tuple:
    """Identity of each weight module, and storage, dtype, device and version of each parameter
    (the fingerprint of `sliced.weights_fingerprint`, read from the known modules only: walking
    `layer.parameters()` costs more than the decoding step of a small layer)."""
    stamp = []
    for module in modules:
        stamp.append(id(module))
        if module is None:
            continue
        for name in ("weight", "bias"):
            p = module._parameters.get(name) if hasattr(module, "_parameters") else None
            if p is not None:
                stamp.append((p.data_ptr(), p.dtype, p.device, None if p.is_inference() else p._version))
    return tuple(stamp)


class WeightsCache:
    """`LayerWeights` per module, read once and kept while the layer's weight modules are the same
    objects and their parameters unchanged (same storage, dtype, device and version counter). Keys
    are the modules themselves (weakly held), so sliced head-plan layers dropped by their own cache
    are dropped here too."""

    def __init__(self):
        self._entries: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get(self, layer: nn.Module) -> LayerWeights:
        stamp = _stamp(layer_modules(layer))
        entry = self._entries.get(layer)
        if entry is None or entry[0] != stamp:
            entry = (stamp, read_layer(layer))
            self._entries[layer] = entry
        return entry[1]

    def clear(self) -> None:
        self._entries.clear()


def unsupported_reason(
    text_model: nn.Module, max_length: int | None = None, memo: dict | None = None
) -> str | None:
    """Why the lean engine cannot run this decoder stack on sequences of up to `max_length` positions
    (None: it can): it runs pre-norm Llama, Qwen2 and Mistral layers with full attention (a sliding
    window is fine while the sequence fits in it), a rotary table that does not depend on the sequence
    length, and plain `nn.Linear` projections (adapters such as PEFT's LoRA wrappers are not read:
    merge them first, or use engine='hf'). `memo` (a dict the caller keeps) remembers the per-layer
    verdict while every layer's weight modules are the same objects."""
    config = text_model.config
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"its text model is {model_type!r}; the lean engine runs {', '.join(SUPPORTED_MODEL_TYPES)}"
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        return f"it has {sorted(layer_types)} attention layers; the lean engine runs full attention only"
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    if window and (max_length is None or max_length > window):
        return (
            f"its sliding attention window ({window}) is shorter than the sequence ({max_length} positions); "
            "the lean engine runs full attention only"
        )
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in STATIC_ROPE_TYPES:
        return (
            f"its rotary embedding is {rope_type!r}; the lean engine supports {', '.join(STATIC_ROPE_TYPES)}"
        )
    if memo is None:
        return _layers_reason(text_model)
    key = tuple(id(m) for layer in text_model.layers for m in (layer, *layer_modules(layer)))
    if memo.get("key") != key:
        memo["key"], memo["reason"] = key, _layers_reason(text_model)
    return memo["reason"]


def _layers_reason(text_model: nn.Module) -> str | None:
    for index, layer in enumerate(text_model.layers):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        parts = [getattr(layer, "input_layernorm", None), getattr(layer, "post_attention_layernorm", None)]
        parts += [
            getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")
        ]
        parts += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")]
        if any(part is None for part in parts) or hasattr(attn, "q_norm"):
            return f"decoder layer {index} ({type(layer).__name__}) is not a Llama-style pre-norm layer"
        linears = [getattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        linears += [getattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")]
        wrapped = [type(linear).__name__ for linear in linears if type(linear) is not nn.Linear]
        if wrapped:
            return f"decoder layer {index} has wrapped projections ({', '.join(sorted(set(wrapped)))})"
    return None
