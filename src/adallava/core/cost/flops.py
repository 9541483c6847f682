"""Analytic FLOPs and bytes of LLaVA-style models: per layer, per head unit and MLP group, per
vision tower, for prefill and decoding (pure functions of shapes and token counts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any

from adallava.core.cost.shapes import ModelShape, ProjectorShape, TextShape, VisionShape

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
    # A part with nothing on costs nothing, its norm and residual add included.
    attention, attention_parts = _attention(shape, T, C, u, dtype_bytes) if u > 0 else (LayerFlops(), ())
    mlp, mlp_parts = _mlp(shape, T, n, dtype_bytes) if n > 0 else (LayerFlops(), ())
    return attention + mlp, attention_parts + mlp_parts


def _attention(
    shape: TextShape | VisionShape, T: int, C: int, u: int, b: float
) -> tuple[LayerFlops, tuple[Part, ...]]:
    """The attention half of a block with `u` head units on, over T queries and C keys: projections,
    scores and softmax, input norm and residual add."""
    h, d = shape.hidden_size, shape.head_dim
    heads = u * shape.heads_per_unit  # query heads running
    q_dim, kv_dim = heads * d, u * d
    # q, k, v: [T, h] @ [h, q_dim + 2 kv_dim]; o: [T, q_dim] @ [q_dim, h]  (2 FLOPs per MAC)
    attn_proj = 2 * T * h * (q_dim + 2 * kv_dim) + 2 * T * q_dim * h
    # QK^T and P @ V: per query head [T, d] @ [d, C] and [T, C] @ [C, d]
    attn_scores = 2 * (2 * T * C * d * heads)
    bias = T * (q_dim + 2 * kv_dim) if shape.qkv_bias else 0
    norm_add, norm_part = _norm_add("attn_norm_add", T, h, b)  # input norm + residual add
    softmax = _SOFTMAX * T * C * heads
    weights = h * (q_dim + 2 * kv_dim) + q_dim * h + h + (q_dim + 2 * kv_dim if shape.qkv_bias else 0)
    parts = (
        Part(
            "attn_proj",
            attn_proj + bias,
            # load x three times, store q and o's output; o loads the attention output
            Bytes(weights * b, (3 * T * h + T * q_dim + T * q_dim + T * h) * b, 2 * T * kv_dim * b),
        ),
        Part(
            "attn_scores",
            attn_scores + softmax,
            # q in, scores out; softmax in/out; scores in, context out; K and V read from cache
            Bytes(0, (T * q_dim + 4 * T * C * heads + T * q_dim) * b, 2 * C * kv_dim * b),
        ),
        norm_part,
    )
    flops = LayerFlops(attn_proj=attn_proj, attn_scores=attn_scores, elementwise=bias + norm_add + softmax)
    return flops, parts


def _mlp(shape: TextShape | VisionShape, T: int, n: int, b: float) -> tuple[LayerFlops, tuple[Part, ...]]:
    """The MLP half of a block with `n` intermediate neurons on, over T tokens: the matrices,
    activation, biases (ViT blocks), norm and residual add."""
    h = shape.hidden_size
    matrices = 3 if shape.gated_mlp else 2
    mlp = 2 * T * h * n * matrices
    bias = 0 if shape.gated_mlp else T * (n + h)  # fc1/fc2 biases (ViT blocks)
    act = _ACT * T * n
    norm_add, norm_part = _norm_add("mlp_norm_add", T, h, b)
    weights = matrices * h * n + h + (0 if shape.gated_mlp else n + h)
    acts = (
        (matrices - 1) * T * (h + n)  # gate and up (or fc1): load x, store n each
        + (matrices - 1) * T * n
        + T * n  # activation (times up): load, store
        + T * (n + h)  # down (or fc2): load n, store h
    )
    parts = (Part("mlp", mlp + bias + act, Bytes(weights * b, acts * b, 0)), norm_part)
    return LayerFlops(mlp=mlp, elementwise=bias + act + norm_add), parts


def _norm_add(name: str, T: int, h: int, b: float) -> tuple[int, Part]:
    """A pre-norm and its residual add over T tokens of width h: FLOPs and the roofline part."""
    flops = _NORM * T * h + T * h
    return flops, Part(name, flops, Bytes(h * b, 4 * T * h * b, 0))


# --------------------------------------------------------------------------------------------------
# Vision tower and projector
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _vision(
    shape: ModelShape, num_images: int, image_tokens: int, dtype_bytes: float
) -> tuple[int, int, int, tuple]:
    """(tower FLOPs, projector FLOPs, elementwise FLOPs, parts) for `num_images` images whose
    projected features are `image_tokens` LLM tokens in all."""
    v, b = shape.vision, dtype_bytes
    if num_images == 0:
        return 0, 0, 0, ()
    embed, embed_elementwise, embed_part = _patch_embedding(v, num_images, b)
    layers, layers_elementwise, layer_parts = _encoder_layers(v, num_images, b)
    tower = embed + layers
    elementwise = embed_elementwise + layers_elementwise
    # post_layernorm: CLIP normalises the class token only, SigLIP every token.
    post_tokens = 1 if v.kind == "clip" else v.seq_len
    elementwise += num_images * _NORM * post_tokens * v.hidden_size
    head_parts: tuple[Part, ...] = ()
    if v.has_head:
        head, head_part = _pooling_head(v, num_images, b)
        tower += head
        head_parts = (head_part,)
    projector, projector_elementwise, projector_part = _projector(shape.projector, image_tokens, b)
    elementwise += projector_elementwise
    return tower, projector, elementwise, (embed_part, *layer_parts, *head_parts, projector_part)


def _patch_embedding(v: VisionShape, num_images: int, b: float) -> tuple[int, int, Part]:
    """(matmul FLOPs, elementwise FLOPs, part) of the patch and position embeddings (and CLIP's
    pre-norm)."""
    h, S, P = v.hidden_size, v.seq_len, v.num_patches
    patch_in = v.num_channels * v.patch_size**2
    # A stride-p convolution = [P, C p^2] @ [C p^2, h] per image.
    embed = 2 * num_images * P * patch_in * h
    elementwise = num_images * S * h  # + position embedding
    if v.kind == "clip":
        elementwise += num_images * _NORM * S * h  # pre_layrnorm
    part = Part(
        "vision.embed",
        embed + elementwise,
        Bytes((patch_in * h + S * h) * b, num_images * (P * patch_in + S * h) * b, 0),
    )
    return embed, elementwise, part


def _encoder_layers(v: VisionShape, num_images: int, b: float) -> tuple[int, int, list[Part]]:
    """(matmul FLOPs, elementwise FLOPs, parts) of the tower's encoder layers over every image."""
    S = v.seq_len
    layer, layer_parts = _layer(v, S, S, None, None, b)
    parts: list[Part] = []
    for part in layer_parts:
        # weights are read once per phase; activations scale with the number of images
        scaled = Bytes(
            part.bytes.weights, part.bytes.activations * num_images, part.bytes.kv_cache * num_images
        )
        parts.extend([Part("vision." + part.name, part.flops * num_images, scaled)] * v.num_layers)
    return v.num_layers * num_images * layer.total, v.num_layers * num_images * layer.elementwise, parts


def _pooling_head(v: VisionShape, num_images: int, b: float) -> tuple[int, Part]:
    """SigLIP's attention pooling: one probe query over S keys; k/v projections over all S tokens."""
    h, S = v.hidden_size, v.seq_len
    head = 2 * h * h * 2 + 2 * S * h * h * 2 + 2 * 2 * S * h + 2 * h * v.intermediate_size * 2
    part = Part(
        "vision.head",
        num_images * head,
        Bytes((4 * h * h + 2 * h * v.intermediate_size) * b, num_images * 3 * S * h * b, 0),
    )
    return num_images * head, part


def _projector(p: ProjectorShape, I: int, b: float) -> tuple[int, int, Part]:  # noqa: E741
    """(matmul FLOPs, elementwise FLOPs, part) of the projector over the I image tokens that enter the
    LLM: [I, in] @ [in, hid], GELU, [I, hid] @ [hid, out]."""
    projector = 2 * I * (p.in_features * p.hidden_features + p.hidden_features * p.out_features)
    elementwise = _ACT * I * p.hidden_features + (I * (p.hidden_features + p.out_features) if p.bias else 0)
    part = Part(
        "projector",
        projector + elementwise,
        Bytes(
            (p.in_features * p.hidden_features + p.hidden_features * p.out_features) * b,
            I * (p.in_features + 3 * p.hidden_features + p.out_features) * b,
            0,
        ),
    )
    return projector, elementwise, part


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
