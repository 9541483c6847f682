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
from collections.abc import Mapping
from dataclasses import dataclass
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


# --------------------------------------------------------------------------------------------------
# One block
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Vision tower and projector
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Plans and phases
# --------------------------------------------------------------------------------------------------


