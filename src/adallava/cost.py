"""The analytic cost model: FLOPs and bytes moved for prefill and decode, per component.

This module is the single source of truth for what a plan costs. The scheduler uses it to respect
budgets, reports use it to say what ran, benchmarks use it to compare with the paper.

Counting convention (docs/cost-model.md has the derivations):

- 2 FLOPs per multiply-add, for every matmul and convolution (LLM-Viewer, Yuan et al. 2024,
  arXiv:2402.16363; the same rule as `torch.utils.flop_counter.FlopCounterMode`).
- Attention scores over the full `tokens x context` square, no causal halving: QK^T and the
  attention-weighted sum of V each cost 2 * tokens * context * head_dim per query head (LLM-Viewer's
  `qk_matmul` / `sv_matmul`; what eager attention executes).
- Bias adds, norms, softmax, activations and residual adds are *elementwise* work: reported in
  `elementwise`, never in `total`. Per element: norm 7, softmax 5 (per score), activation 2,
  residual add 1, bias add 1 (LLM-Viewer's constants).
- Bytes moved follow LLM-Viewer's per-operator accounting without FlashAttention: weights read
  once per phase, each operator's inputs loaded and outputs stored, K/V written to and read from
  the cache.

Everything here is plain Python (no torch): pricing a plan is tens of microseconds of arithmetic.
Plans are given row-wise as plain sequences: `layers` (N bools), `head_units` and `mlp_neurons`
(N ints).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any

# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------


def _check_positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class TextShape:
    """Shape of a decoder-only text model (Llama / Vicuna, Qwen2, Mistral; GQA allowed).

    A *head unit* is what one attention switch removes: a KV group, i.e. the
    `num_heads // num_kv_heads` query heads sharing one KV head (one query head without GQA).
    There are `num_kv_heads` head units per layer.
    """

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    gated_mlp: bool = True  # gate/up/down (Llama, Qwen2, Mistral); False: fc1/fc2
    qkv_bias: bool = False  # Qwen2: q/k/v projections carry a bias

    def __post_init__(self):
        _check_positive(
            self, "num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size"
        )
        if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int) or self.vocab_size < 0:
            raise ValueError(f"TextShape.vocab_size must be a non-negative integer, got {self.vocab_size!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"TextShape.num_heads ({self.num_heads}) must be a multiple of "
                f"TextShape.num_kv_heads ({self.num_kv_heads})"
            )

    @property
    def heads_per_unit(self) -> int:
        """Query heads in one head unit (1 without GQA)."""
        return self.num_heads // self.num_kv_heads

    @property
    def num_head_units(self) -> int:
        """Head units (switchable attention groups) per layer."""
        return self.num_kv_heads


@dataclass(frozen=True)
class VisionShape:
    """Shape of a ViT image encoder as Hugging Face runs it inside Llava.

    `kind` "clip": a class token is prepended and a LayerNorm (`pre_layrnorm`) runs before the
    encoder; `post_layernorm` runs on the class token only. `kind` "siglip": no class token, no
    pre-norm, `post_layernorm` on every token, and the attention-pooling head runs if `has_head`.
    """

    kind: str
    image_size: int
    patch_size: int
    num_channels: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    has_head: bool = False  # SigLIP's multihead attention-pooling head

    def __post_init__(self):
        if self.kind not in ("clip", "siglip"):
            raise ValueError(f"VisionShape.kind must be 'clip' or 'siglip', got {self.kind!r}")
        _check_positive(
            self,
            "image_size",
            "patch_size",
            "num_channels",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
        )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"VisionShape.hidden_size ({self.hidden_size}) must be a multiple of "
                f"VisionShape.num_heads ({self.num_heads})"
            )
        if self.has_head and self.kind != "siglip":
            raise ValueError("VisionShape.has_head is only valid for kind='siglip'")

    # The encoder layers are plain MHA blocks with a 2-matrix MLP and biases; these properties let
    # `layer_flops` count them with the same formulas as a decoder layer.
    @property
    def has_cls_token(self) -> bool:
        return self.kind == "clip"

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def heads_per_unit(self) -> int:
        return 1

    @property
    def gated_mlp(self) -> bool:
        return False

    @property
    def qkv_bias(self) -> bool:
        return True

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def seq_len(self) -> int:
        """Tokens through the encoder per image: patches (+1 class token for CLIP)."""
        return self.num_patches + int(self.has_cls_token)


@dataclass(frozen=True)
class ProjectorShape:
    """Llava's multimodal projector: Linear(in -> hidden), GELU, Linear(hidden -> out)."""

    in_features: int
    hidden_features: int
    out_features: int
    bias: bool = True

    def __post_init__(self):
        _check_positive(self, "in_features", "hidden_features", "out_features")


@dataclass(frozen=True)
class ModelShape:
    """A whole model: text decoder, optional vision tower and projector (None for text-only)."""

    text: TextShape
    vision: VisionShape | None = None
    projector: ProjectorShape | None = None
    vision_feature_select_strategy: str = "default"

    def __post_init__(self):
        if (self.vision is None) != (self.projector is None):
            raise ValueError("ModelShape.vision and ModelShape.projector must both be set or both be None")
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                "ModelShape.vision_feature_select_strategy must be 'default' or 'full', "
                f"got {self.vision_feature_select_strategy!r}"
            )

    @property
    def num_layers(self) -> int:
        return self.text.num_layers

    @property
    def image_tokens_per_image(self) -> int:
        """Image tokens one image puts into the LLM (576 for CLIP ViT-L/14 at 336 px).

        Hugging Face's "default" strategy drops the first encoder token (the class token for CLIP;
        note it drops a patch for SigLIP, which has none); "full" keeps every token.
        """
        if self.vision is None:
            return 0
        drop = 1 if self.vision_feature_select_strategy == "default" else 0
        return self.vision.seq_len - drop

    @classmethod
    def from_config(cls, cfg: Any) -> ModelShape:
        """Read a shape from a transformers config object (LlavaConfig or a text config such as
        LlamaConfig), a config.json dict, or a path to a config.json or a folder holding one.

        Missing fields take Hugging Face's defaults for the config's `model_type`, as
        `transformers` itself would fill them.
        """
        return _shape_from_dict(_config_dict(cfg))


# Hugging Face's defaults for fields a config.json may omit (llava-hf's files rely on them).
_TEXT_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
    ),
    "mistral": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
    ),
    "qwen2": dict(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=22016,
        num_hidden_layers=32,
        num_attention_heads=32,
    ),
}
_VISION_DEFAULTS: dict[str, dict[str, Any]] = {
    "clip_vision_model": dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_channels=3,
        image_size=224,
        patch_size=32,
    ),
    "siglip_vision_model": dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_channels=3,
        image_size=224,
        patch_size=16,
        vision_use_head=True,
    ),
}
# LlavaConfig() without a vision_config builds CLIP ViT-L/14 at 336 px.
_LLAVA_DEFAULT_VISION = dict(
    model_type="clip_vision_model",
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
)


def _config_dict(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, (str, os.PathLike)):
        path = os.fspath(cfg)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no config.json at {os.fspath(cfg)!r} (give a config.json or a folder holding one)"
            )
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    if hasattr(cfg, "to_dict"):  # a transformers PretrainedConfig
        return cfg.to_dict()
    raise TypeError(f"cannot read a model shape from {type(cfg).__name__}; give a config, dict or path")


def _sub_dict(value: Any) -> dict[str, Any] | None:
    if value is None or isinstance(value, Mapping):
        return None if value is None else dict(value)
    return value.to_dict()


def _with_defaults(d: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    out.update({k: v for k, v in d.items() if v is not None})
    return out


def _text_shape(d: Mapping[str, Any]) -> TextShape:
    model_type = d.get("model_type") or "llama"
    t = _with_defaults(d, _TEXT_DEFAULTS.get(model_type, {}))
    missing = [
        k
        for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        if k not in t
    ]
    if missing:
        raise ValueError(f"text config of model_type {model_type!r} lacks {missing}")
    heads = t["num_attention_heads"]
    return TextShape(
        num_layers=t["num_hidden_layers"],
        hidden_size=t["hidden_size"],
        num_heads=heads,
        num_kv_heads=t.get("num_key_value_heads") or heads,
        head_dim=t.get("head_dim") or t["hidden_size"] // heads,
        intermediate_size=t["intermediate_size"],
        vocab_size=t.get("vocab_size", 0),
        gated_mlp=True,
        qkv_bias=model_type == "qwen2" or bool(t.get("attention_bias", False)),
    )


def _vision_shape(d: Mapping[str, Any]) -> VisionShape:
    model_type = d.get("model_type") or "clip_vision_model"
    if model_type not in _VISION_DEFAULTS:
        raise ValueError(
            f"vision tower model_type {model_type!r} is not supported; "
            f"expected one of {sorted(_VISION_DEFAULTS)}"
        )
    v = _with_defaults(d, _VISION_DEFAULTS[model_type])
    kind = "clip" if model_type == "clip_vision_model" else "siglip"
    return VisionShape(
        kind=kind,
        image_size=v["image_size"],
        patch_size=v["patch_size"],
        num_channels=v["num_channels"],
        hidden_size=v["hidden_size"],
        intermediate_size=v["intermediate_size"],
        num_layers=v["num_hidden_layers"],
        num_heads=v["num_attention_heads"],
        has_head=kind == "siglip" and bool(v.get("vision_use_head", True)),
    )


def _shape_from_dict(d: Mapping[str, Any]) -> ModelShape:
    is_multimodal = "text_config" in d or "vision_config" in d or d.get("model_type") == "llava"
    if not is_multimodal:
        return ModelShape(text=_text_shape(d))
    text = _text_shape(_sub_dict(d.get("text_config")) or {})
    vision = _vision_shape(_sub_dict(d.get("vision_config")) or _LLAVA_DEFAULT_VISION)
    feature_layer = d.get("vision_feature_layer", -2)
    num_feature_layers = len(feature_layer) if isinstance(feature_layer, (list, tuple)) else 1
    projector = ProjectorShape(
        in_features=vision.hidden_size * num_feature_layers,
        hidden_features=text.hidden_size,
        out_features=text.hidden_size,
        bias=bool(d.get("multimodal_projector_bias", True)),
    )
    return ModelShape(
        text=text,
        vision=vision,
        projector=projector,
        vision_feature_select_strategy=d.get("vision_feature_select_strategy") or "default",
    )


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerFlops:
    """FLOPs of one transformer block for one phase. `total` = matmul FLOPs (attn_proj +
    attn_scores + mlp); `elementwise` is reported beside it, never inside it."""

    attn_proj: int = 0  # q, k, v, o projections
    attn_scores: int = 0  # QK^T and scores @ V over the tokens x context square
    mlp: int = 0
    elementwise: int = 0  # norms, softmax, activation, bias and residual adds

    @property
    def total(self) -> int:
        return self.attn_proj + self.attn_scores + self.mlp

    def __add__(self, other: LayerFlops) -> LayerFlops:
        return LayerFlops(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class Bytes:
    """Bytes moved between memory and compute units in one phase (LLM-Viewer's accounting)."""

    weights: float = 0
    activations: float = 0
    kv_cache: float = 0

    @property
    def total(self) -> float:
        return self.weights + self.activations + self.kv_cache

    def __add__(self, other: Bytes) -> Bytes:
        return Bytes(
            self.weights + other.weights, self.activations + other.activations, self.kv_cache + other.kv_cache
        )

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class Part:
    """One operator group for the roofline: its FLOPs (matmul + elementwise) and bytes."""

    name: str
    flops: int
    bytes: Bytes


@dataclass(frozen=True)
class Cost:
    """Cost of one row for one phase (a prefill, or one decode step). FLOPs unless stated.

    `total` = vision + llm + lm_head (matmul FLOPs). `vision` = vision_tower + projector.
    `norm` (the final norm) and everything else elementwise is in `elementwise`, not in `total`.
    """

    vision_tower: int
    projector: int
    llm: int  # decoder stack, matmul FLOPs
    per_layer: tuple[LayerFlops, ...]  # N entries; an off layer is all zeros
    norm: int  # final norm (elementwise)
    lm_head: int
    elementwise: int  # all elementwise work of the phase (vision, decoder, final norm)
    bytes: Bytes
    parts: tuple[Part, ...] = ()  # operator groups, for `hardware.roofline_time`
    dtype_bytes: float = 2

    @property
    def vision(self) -> int:
        return self.vision_tower + self.projector

    @property
    def total(self) -> int:
        return self.vision + self.llm + self.lm_head

    @property
    def layers_run(self) -> int:
        return sum(1 for layer in self.per_layer if layer.total > 0)

    def __add__(self, other: Cost) -> Cost:
        """Sum of two phases of the same model (e.g. prefill + decode steps)."""
        if len(self.per_layer) != len(other.per_layer):
            raise ValueError("cannot add costs of models with different numbers of layers")
        if self.dtype_bytes != other.dtype_bytes:
            raise ValueError("cannot add costs computed with different dtype_bytes")
        return Cost(
            vision_tower=self.vision_tower + other.vision_tower,
            projector=self.projector + other.projector,
            llm=self.llm + other.llm,
            per_layer=tuple(a + b for a, b in zip(self.per_layer, other.per_layer, strict=True)),
            norm=self.norm + other.norm,
            lm_head=self.lm_head + other.lm_head,
            elementwise=self.elementwise + other.elementwise,
            bytes=self.bytes + other.bytes,
            parts=self.parts + other.parts,
            dtype_bytes=self.dtype_bytes,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (FLOPs and bytes as numbers; parts left out)."""
        return {
            "vision": self.vision,
            "vision_tower": self.vision_tower,
            "projector": self.projector,
            "llm": self.llm,
            "lm_head": self.lm_head,
            "norm": self.norm,
            "elementwise": self.elementwise,
            "total": self.total,
            "layers_run": self.layers_run,
            "bytes": self.bytes.to_dict(),
            "dtype_bytes": self.dtype_bytes,
            "per_layer": [layer.to_dict() for layer in self.per_layer],
        }


# --------------------------------------------------------------------------------------------------
# One block
# --------------------------------------------------------------------------------------------------

# Elementwise FLOPs per element (LLM-Viewer's constants): a norm is sum, sub, pow, sum, div, mul, add;
# softmax is max, sub, exp, sum, div per score; a gated activation is act + mul.
_NORM = 7
_SOFTMAX = 5
_ACT = 2


def layer_flops(
    text: TextShape | VisionShape,
    tokens: int,
    context: int | None = None,
    head_units_on: int | None = None,
    mlp_neurons_on: int | None = None,
) -> LayerFlops:
    """FLOPs of one transformer block over `tokens` query positions attending to `context` keys.

    `context` defaults to `tokens` (prefill); a decode step has tokens=1, context=past+1.
    `head_units_on` (0..num_kv_heads, default all) head units run; removing one removes its q, k,
    v and o slices. `mlp_neurons_on` (0..intermediate_size, default all) intermediate neurons run.
    A part with nothing on costs nothing, its norm and residual add included.
    """
    return _layer(text, tokens, context, head_units_on, mlp_neurons_on, 2)[0]


def layer_unit_flops(text: TextShape, tokens: int, context: int | None = None) -> int:
    """Matmul FLOPs of one full decoder layer (the cost of one layer switch)."""
    return layer_flops(text, tokens, context).total


def head_unit_flops(text: TextShape, tokens: int, context: int | None = None) -> int:
    """Matmul FLOPs of one head unit: its q/k/v/o slices plus its share of the attention scores.

    A layer's attention cost is exactly `units_on * head_unit_flops`.
    """
    return layer_flops(text, tokens, context, head_units_on=1, mlp_neurons_on=0).total


def mlp_group_flops(text: TextShape, tokens: int, neurons: int) -> int:
    """Matmul FLOPs of `neurons` intermediate neurons (a neuron group), linear in `neurons`."""
    _check_count("neurons", neurons, text.intermediate_size)
    matrices = 3 if text.gated_mlp else 2
    return 2 * tokens * text.hidden_size * neurons * matrices


def _check_count(name: str, value: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValueError(f"{name} must be an integer in [0, {maximum}], got {value!r}")


@lru_cache(maxsize=4096)
def _layer(
    shape: TextShape | VisionShape,
    tokens: int,
    context: int | None,
    units: int | None,
    neurons: int | None,
    dtype_bytes: float,
) -> tuple[LayerFlops, tuple[Part, ...]]:
    """FLOPs and per-operator bytes of one block. Cached: a plan's layers share a few shapes."""
    T = tokens
    C = tokens if context is None else context
    if T < 0 or C < 0:
        raise ValueError(f"tokens and context must be >= 0, got tokens={tokens}, context={context}")
    u = shape.num_kv_heads if units is None else units
    n = shape.intermediate_size if neurons is None else neurons
    _check_count("head_units_on", u, shape.num_kv_heads)
    _check_count("mlp_neurons_on", n, shape.intermediate_size)
    h, d = shape.hidden_size, shape.head_dim
    heads = u * shape.heads_per_unit  # query heads running
    q_dim, kv_dim = heads * d, u * d
    b = dtype_bytes

    parts: list[Part] = []
    attn_proj = attn_scores = mlp = elementwise = 0
    if u > 0:
        # q, k, v: [T, h] @ [h, q_dim + 2 kv_dim]; o: [T, q_dim] @ [q_dim, h]  (2 FLOPs per MAC)
        attn_proj = 2 * T * h * (q_dim + 2 * kv_dim) + 2 * T * q_dim * h
        # QK^T and P @ V: per query head [T, d] @ [d, C] and [T, C] @ [C, d]
        attn_scores = 2 * (2 * T * C * d * heads)
        bias = T * (q_dim + 2 * kv_dim) if shape.qkv_bias else 0
        norm_add = _NORM * T * h + T * h  # input norm + residual add
        softmax = _SOFTMAX * T * C * heads
        elementwise += bias + norm_add + softmax
        weights = h * (q_dim + 2 * kv_dim) + q_dim * h + h + (q_dim + 2 * kv_dim if shape.qkv_bias else 0)
        parts.append(
            Part(
                "attn_proj",
                attn_proj + bias,
                # load x three times, store q and o's output; o loads the attention output
                Bytes(weights * b, (3 * T * h + T * q_dim + T * q_dim + T * h) * b, 2 * T * kv_dim * b),
            )
        )
        parts.append(
            Part(
                "attn_scores",
                attn_scores + softmax,
                # q in, scores out; softmax in/out; scores in, context out; K and V read from cache
                Bytes(0, (T * q_dim + 4 * T * C * heads + T * q_dim) * b, 2 * C * kv_dim * b),
            )
        )
        parts.append(Part("attn_norm_add", norm_add, Bytes(h * b, 4 * T * h * b, 0)))
    if n > 0:
        matrices = 3 if shape.gated_mlp else 2
        mlp = 2 * T * h * n * matrices
        bias = 0 if shape.gated_mlp else T * (n + h)  # fc1/fc2 biases (ViT blocks)
        act = _ACT * T * n
        norm_add = _NORM * T * h + T * h
        elementwise += bias + act + norm_add
        weights = matrices * h * n + h + (0 if shape.gated_mlp else n + h)
        acts = (
            (matrices - 1) * T * (h + n)  # gate and up (or fc1): load x, store n each
            + (matrices - 1) * T * n
            + T * n  # activation (times up): load, store
            + T * (n + h)  # down (or fc2): load n, store h
        )
        parts.append(Part("mlp", mlp + bias + act, Bytes(weights * b, acts * b, 0)))
        parts.append(Part("mlp_norm_add", norm_add, Bytes(h * b, 4 * T * h * b, 0)))
    return LayerFlops(attn_proj, attn_scores, mlp, elementwise), tuple(parts)


# --------------------------------------------------------------------------------------------------
# Vision tower and projector
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _vision(
    shape: ModelShape, num_images: int, image_tokens: int, dtype_bytes: float
) -> tuple[int, int, int, tuple]:
    """(tower FLOPs, projector FLOPs, elementwise FLOPs, parts) for `num_images` images whose
    projected features are `image_tokens` LLM tokens in all."""
    v, p, b = shape.vision, shape.projector, dtype_bytes
    if num_images == 0:
        return 0, 0, 0, ()
    h, S, P = v.hidden_size, v.seq_len, v.num_patches
    patch_in = v.num_channels * v.patch_size**2
    parts: list[Part] = []
    # Patch embedding: a stride-p convolution = [P, C p^2] @ [C p^2, h] per image.
    embed = 2 * num_images * P * patch_in * h
    embed_elementwise = num_images * S * h  # + position embedding
    if v.kind == "clip":
        embed_elementwise += num_images * _NORM * S * h  # pre_layrnorm
    parts.append(
        Part(
            "vision.embed",
            embed + embed_elementwise,
            Bytes((patch_in * h + S * h) * b, num_images * (P * patch_in + S * h) * b, 0),
        )
    )
    layer, layer_parts = _layer(v, S, S, None, None, dtype_bytes)
    tower = embed + v.num_layers * num_images * layer.total
    elementwise = embed_elementwise + v.num_layers * num_images * layer.elementwise
    for part in layer_parts:
        # weights are read once per phase; activations scale with the number of images
        scaled = Bytes(
            part.bytes.weights, part.bytes.activations * num_images, part.bytes.kv_cache * num_images
        )
        parts.extend([Part("vision." + part.name, part.flops * num_images, scaled)] * v.num_layers)
    # post_layernorm: CLIP normalises the class token only, SigLIP every token.
    post_tokens = 1 if v.kind == "clip" else S
    elementwise += num_images * _NORM * post_tokens * h
    if v.has_head:
        # SigLIP attention pooling: one probe query over S keys; k/v projections over all S tokens.
        head = 2 * h * h * 2 + 2 * S * h * h * 2 + 2 * 2 * S * h + 2 * h * v.intermediate_size * 2
        tower += num_images * head
        parts.append(
            Part(
                "vision.head",
                num_images * head,
                Bytes((4 * h * h + 2 * h * v.intermediate_size) * b, num_images * 3 * S * h * b, 0),
            )
        )
    # Projector over the image tokens that enter the LLM: [I, in] @ [in, hid], GELU, [I, hid] @ [hid, out].
    I = image_tokens  # noqa: E741
    projector = 2 * I * (p.in_features * p.hidden_features + p.hidden_features * p.out_features)
    proj_elementwise = _ACT * I * p.hidden_features + (
        I * (p.hidden_features + p.out_features) if p.bias else 0
    )
    elementwise += proj_elementwise
    parts.append(
        Part(
            "projector",
            projector + proj_elementwise,
            Bytes(
                (p.in_features * p.hidden_features + p.hidden_features * p.out_features) * b,
                I * (p.in_features + 3 * p.hidden_features + p.out_features) * b,
                0,
            ),
        )
    )
    return tower, projector, elementwise, tuple(parts)


# --------------------------------------------------------------------------------------------------
# Plans and phases
# --------------------------------------------------------------------------------------------------


def _plan(
    text: TextShape,
    layers: Sequence[bool] | None,
    head_units: Sequence[int] | None,
    mlp_neurons: Sequence[int] | None,
) -> list[tuple[int | None, int | None]]:
    """Per layer (units, neurons); (0, 0) for an off layer. Validates lengths."""
    N = text.num_layers
    for name, seq in (("layers", layers), ("head_units", head_units), ("mlp_neurons", mlp_neurons)):
        if seq is not None and len(seq) != N:
            raise ValueError(f"{name} has {len(seq)} entries but the model has {N} layers")
    plan = []
    for i in range(N):
        if layers is not None and not bool(layers[i]):
            plan.append((0, 0))
            continue
        units = None if head_units is None else int(head_units[i])
        neurons = None if mlp_neurons is None else int(mlp_neurons[i])
        plan.append((units, neurons))
    return plan


def _phase(
    shape: ModelShape,
    tokens: int,
    context: int,
    plan: list[tuple[int | None, int | None]],
    logits_tokens: int,
    vision: tuple[int, int, int, tuple],
    dtype_bytes: float,
) -> Cost:
    text, b = shape.text, dtype_bytes
    per_layer = []
    parts = list(vision[3])
    for units, neurons in plan:
        flops, layer_parts = _layer(text, tokens, context, units, neurons, dtype_bytes)
        per_layer.append(flops)
        parts.extend(layer_parts)
    llm = sum(layer.total for layer in per_layer)
    h, V = text.hidden_size, text.vocab_size
    norm = _NORM * tokens * h
    lm_head = 2 * logits_tokens * h * V
    # Token embedding rows read for the new tokens, then the final norm and the lm_head.
    parts.append(Part("embed_tokens", 0, Bytes(0, 2 * tokens * h * b, 0)))
    parts.append(Part("norm", norm, Bytes(h * b, 2 * tokens * h * b, 0)))
    parts.append(Part("lm_head", lm_head, Bytes(h * V * b, logits_tokens * (h + V) * b, 0)))
    total_bytes = Bytes(
        sum(part.bytes.weights for part in parts),
        sum(part.bytes.activations for part in parts),
        sum(part.bytes.kv_cache for part in parts),
    )
    return Cost(
        vision_tower=vision[0],
        projector=vision[1],
        llm=llm,
        per_layer=tuple(per_layer),
        norm=norm,
        lm_head=lm_head,
        elementwise=vision[2] + sum(layer.elementwise for layer in per_layer) + norm,
        bytes=total_bytes,
        parts=tuple(parts),
        dtype_bytes=dtype_bytes,
    )


def prefill_cost(
    shape: ModelShape,
    image_tokens: int,
    text_tokens: int,
    layers: Sequence[bool] | None = None,
    head_units: Sequence[int] | None = None,
    mlp_neurons: Sequence[int] | None = None,
    logits_tokens: int | None = None,
    num_images: int | None = None,
    dtype_bytes: float = 2,
) -> Cost:
    """Cost of one row's prefill: vision tower + projector, the decoder stack over
    `image_tokens + text_tokens` tokens under the plan, final norm, lm_head.

    Plan (all optional, default: everything runs): `layers` N bools (False = the layer is skipped
    and costs 0); `head_units` / `mlp_neurons` N ints, how many head units / intermediate neurons
    run in each layer. `logits_tokens`: positions through lm_head (default all, as HF's forward;
    generation computes 1). `num_images`: images through the vision tower (default 1 if
    image_tokens > 0, else 0); the projector runs on `image_tokens` tokens. `dtype_bytes`: bytes
    per weight / activation / cache element for `Cost.bytes`.
    """
    _check_nonneg(image_tokens=image_tokens, text_tokens=text_tokens)
    if num_images is None:
        num_images = 1 if image_tokens > 0 else 0
    _check_nonneg(num_images=num_images)
    if num_images and shape.vision is None:
        raise ValueError("this model has no vision tower: give image_tokens=0 (or num_images=0)")
    tokens = image_tokens + text_tokens
    logits_tokens = tokens if logits_tokens is None else logits_tokens
    if not 0 <= logits_tokens <= tokens:
        raise ValueError(f"logits_tokens must be in [0, {tokens}], got {logits_tokens}")
    vision = _vision(shape, num_images, image_tokens, dtype_bytes) if num_images else (0, 0, 0, ())
    plan = _plan(shape.text, layers, head_units, mlp_neurons)
    return _phase(shape, tokens, tokens, plan, logits_tokens, vision, dtype_bytes)


def decode_step_cost(
    shape: ModelShape,
    context: int,
    layers: Sequence[bool] | None = None,
    head_units: Sequence[int] | None = None,
    mlp_neurons: Sequence[int] | None = None,
    dtype_bytes: float = 2,
) -> Cost:
    """Cost of generating one token for one row: one new position attending to `context` keys
    (= past tokens + 1), under the plan (see `prefill_cost`), with lm_head over that position.

    A plan's off layers hold no cache, so they cost nothing here either.
    """
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise ValueError(f"context must be an integer >= 1 (past tokens + 1), got {context!r}")
    plan = _plan(shape.text, layers, head_units, mlp_neurons)
    return _phase(shape, 1, context, plan, 1, (0, 0, 0, ()), dtype_bytes)


def decode_cost(
    shape: ModelShape,
    past_tokens: int,
    new_tokens: int,
    layers: Sequence[bool] | None = None,
    head_units: Sequence[int] | None = None,
    mlp_neurons: Sequence[int] | None = None,
    dtype_bytes: float = 2,
) -> Cost:
    """Sum of `new_tokens` decode steps after `past_tokens` cached positions (contexts
    past+1 .. past+new), in closed form: every count is affine in the context, so the sum is
    (n - S) * step(0) + S * step(1) with S the sum of the contexts. Equal to adding the steps.
    """
    _check_nonneg(past_tokens=past_tokens, new_tokens=new_tokens)
    plan = _plan(shape.text, layers, head_units, mlp_neurons)
    n = new_tokens
    S = n * past_tokens + n * (n + 1) // 2
    at0, at1 = (_phase(shape, 1, c, plan, 1, (0, 0, 0, ()), dtype_bytes) for c in (0, 1))
    w0, w1 = n - S, S

    def mix(a, b):
        return w0 * a + w1 * b

    def mix_bytes(a: Bytes, b: Bytes) -> Bytes:
        return Bytes(
            mix(a.weights, b.weights), mix(a.activations, b.activations), mix(a.kv_cache, b.kv_cache)
        )

    return Cost(
        vision_tower=0,
        projector=0,
        llm=mix(at0.llm, at1.llm),
        per_layer=tuple(
            LayerFlops(*(mix(getattr(a, f.name), getattr(b, f.name)) for f in fields(LayerFlops)))
            for a, b in zip(at0.per_layer, at1.per_layer, strict=True)
        ),
        norm=mix(at0.norm, at1.norm),
        lm_head=mix(at0.lm_head, at1.lm_head),
        elementwise=mix(at0.elementwise, at1.elementwise),
        bytes=mix_bytes(at0.bytes, at1.bytes),
        # One operator per part for all steps: the roofline then takes each part's regime over the
        # whole generation (decode parts are bandwidth-bound at every step in practice).
        parts=tuple(
            Part(a.name, mix(a.flops, b.flops), mix_bytes(a.bytes, b.bytes))
            for a, b in zip(at0.parts, at1.parts, strict=True)
        ),
        dtype_bytes=dtype_bytes,
    )


def llm_prefill_flops(
    text: TextShape,
    tokens: int,
    layers: Sequence[bool] | None = None,
    head_units: Sequence[int] | None = None,
    mlp_neurons: Sequence[int] | None = None,
) -> int:
    """Decoder-stack matmul FLOPs of a prefill over `tokens` tokens under a plan: the quantity a
    budget fraction is a fraction of. Cheaper than `prefill_cost` (no bytes, no vision)."""
    return sum(
        _layer(text, tokens, tokens, units, neurons, 2)[0].total
        for units, neurons in _plan(text, layers, head_units, mlp_neurons)
    )


def _check_nonneg(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
