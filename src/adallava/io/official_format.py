"""The official AdaLLaVA checkpoint's config: reading and checking it, and the configs it maps to.

An official checkpoint is in the original LLaVA repository's format (`model_type: ada_llava_llama`;
DESIGN.md, "Facts about the official AdaLLaVA checkpoints"): one config.json holding the LLaMA fields,
LLaVA's `mm_*` options and AdaLLaVA's scheduler fields. These pure functions check it and turn it into
our AdaptiveConfig and HF's LlavaConfig; the CLIP tower is a separate folder (`read_vision_config`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

from adallava.core.config import OFFICIAL_TOKEN_SELECTIONS, AdaptiveConfig

OFFICIAL_MODEL_TYPE = "ada_llava_llama"

# Config fields of the official checkpoint that make up the LLaMA text config (those present are used).
LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
    "rms_norm_eps", "rope_theta", "rope_scaling", "attention_bias", "attention_dropout", "mlp_bias",
    "pretraining_tp", "tie_word_embeddings", "bos_token_id", "eos_token_id", "use_cache",
)  # fmt: skip
REQUIRED_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer", "num_prefix_layers", "scheduler_type",
)  # fmt: skip
SCHEDULER_TYPES = {"L": "layer", "H": "head"}
# LLaVA's mm_vision_select_feature -> transformers' vision_feature_select_strategy.
SELECT_FEATURES = {"patch": "default", "cls_patch": "full"}
# transformers' conversion appends <image> and <pad>, then pads the vocabulary to this multiple.
VOCAB_MULTIPLE = 64


# ---- reading and checking -----------------------------------------------------------------------


def read_official_config(directory: str | Path) -> dict[str, Any]:
    """config.json of an official AdaLLaVA checkpoint, checked: the model type, the required fields and
    the LLaVA options this conversion supports. Raises FileNotFoundError / ValueError naming the field."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --from-official must be an official AdaLLaVA checkpoint folder"
        )
    config = json.loads(path.read_text())
    model_type = config.get("model_type")
    if model_type != OFFICIAL_MODEL_TYPE:
        hint = (
            " (a plain LLaVA checkpoint: convert it with transformers' convert_llava_weights_to_hf.py, then "
            "`adallava init --base DIR`)"
            if model_type in ("llava", "llava_llama")
            else ""
        )
        raise ValueError(f"{path}: model_type is {model_type!r}, expected {OFFICIAL_MODEL_TYPE!r}{hint}")
    missing = [field for field in REQUIRED_FIELDS if config.get(field) is None]
    if missing:
        raise ValueError(
            f"{path} lacks the field(s) {', '.join(missing)} needed to convert an AdaLLaVA checkpoint"
        )
    _check_scheduler(path, config)
    _check_llava_options(path, config)
    return config


def _check_scheduler(path: Path, config: dict[str, Any]) -> None:
    """AdaLLaVA's fields: a known scheduler type, with its rank for H."""
    if config["scheduler_type"] not in SCHEDULER_TYPES:
        raise ValueError(
            f"{path}: scheduler_type must be one of {sorted(SCHEDULER_TYPES)} (AdaLLaVA-L / AdaLLaVA-H), "
            f"got {config['scheduler_type']!r}"
        )
    if config["scheduler_type"] == "H" and config.get("scheduler_rank") is None:
        raise ValueError(f"{path}: scheduler_type 'H' needs the field scheduler_rank (heads per budget unit)")


def _check_llava_options(path: Path, config: dict[str, Any]) -> None:
    """LLaVA's options, limited to those HF Llava reproduces (LLaVA-1.5's layout)."""
    if config["mm_projector_type"] != "mlp2x_gelu":
        raise ValueError(
            f"{path}: mm_projector_type {config['mm_projector_type']!r} is not supported; HF Llava's "
            "projector is LLaVA-1.5's 'mlp2x_gelu' (Linear, GELU, Linear)"
        )
    feature = config.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURES:
        raise ValueError(
            f"{path}: mm_vision_select_feature must be one of {sorted(SELECT_FEATURES)}, got {feature!r}"
        )
    for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if config.get(flag):
            raise ValueError(f"{path}: {flag}=true is not supported (HF Llava has no image start/end tokens)")
    if config.get("mm_patch_merge_type", "flat") != "flat":
        raise ValueError(
            f"{path}: mm_patch_merge_type must be 'flat' (LLaVA-1.5), got {config['mm_patch_merge_type']!r}"
        )
    if config.get("image_aspect_ratio", "pad") not in ("pad", "square", None):
        raise ValueError(
            f"{path}: image_aspect_ratio {config['image_aspect_ratio']!r} is not supported; "
            "LLaVA-1.5 uses 'pad'"
        )
    if config.get("token_selecting", "none") not in OFFICIAL_TOKEN_SELECTIONS:
        raise ValueError(
            f"{path}: token_selecting must be one of {OFFICIAL_TOKEN_SELECTIONS}, "
            f"got {config['token_selecting']!r}"
        )


def read_vision_config(directory: str | Path) -> CLIPVisionConfig:
    """The CLIP vision config of a CLIPVisionModel or CLIPModel folder."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: --vision-tower must be a Hugging Face CLIP folder "
            "(e.g. openai/clip-vit-large-patch14-336)"
        )
    model_type = json.loads(path.read_text()).get("model_type")
    if model_type not in ("clip", "clip_vision_model"):
        raise ValueError(
            f"{path}: model_type {model_type!r}; --vision-tower must be a CLIP (vision) model folder"
        )
    return CLIPVisionConfig.from_pretrained(directory)


# ---- config mapping (pure) ----------------------------------------------------------------------


def adaptive_config_from_official(config: dict[str, Any], latency_frequencies: int = 128) -> AdaptiveConfig:
    """AdaptiveConfig that reproduces the official checkpoint: switch kind from scheduler_type, P,
    rank = scheduler_rank, one MLP group per head and the official selection rule."""
    switches = SCHEDULER_TYPES[config["scheduler_type"]]
    heads = config["num_attention_heads"]
    rank = config.get("scheduler_rank") or AdaptiveConfig.rank
    if switches == "head":
        if config.get("num_key_value_heads", heads) != heads:
            raise ValueError(
                "the official AdaLLaVA-H switches single attention heads; num_key_value_heads "
                f"({config['num_key_value_heads']}) != num_attention_heads ({heads}) is not supported"
            )
        if heads % rank:
            raise ValueError(f"scheduler_rank ({rank}) must divide num_attention_heads ({heads})")
    return AdaptiveConfig(
        switches=switches,
        num_prefix_layers=config["num_prefix_layers"],
        rank=rank,
        mlp_groups=heads if switches == "head" else None,
        latency_frequencies=latency_frequencies,
        selection="official",
        # The authors' 'prumerge+' is our 'prumerge+' (spatial samples from patch 0, as their
        # prumerge_utils.prune_merge_plus), not 'prumerge+offset'.
        token_selection=config.get("token_selecting", "none"),
    ).resolve(config["num_hidden_layers"])


def official_num_switches(config: dict[str, Any]) -> int:
    """Rows of the official `scheduler.mlp_head`: one per upper layer (L), or per upper layer one per
    attention head and one per MLP group (H)."""
    upper = config["num_hidden_layers"] - config["num_prefix_layers"]
    return upper * (2 * config["num_attention_heads"] if config["scheduler_type"] == "H" else 1)


def text_config_from_official(config: dict[str, Any], vocab_size: int, pad_token_id: int) -> LlamaConfig:
    """The LLaMA part of the official config, with the grown vocabulary and the new pad token."""
    fields = {name: config[name] for name in LLAMA_FIELDS if config.get(name) is not None}
    fields |= {"vocab_size": vocab_size, "pad_token_id": pad_token_id}
    return LlamaConfig(**fields)


def llava_config_from_official(
    config: dict[str, Any],
    vision_config: CLIPVisionConfig,
    vocab_size: int,
    image_token_id: int,
    pad_token_id: int,
) -> LlavaConfig:
    """HF LlavaConfig equivalent to the official LLaVA-1.5 layout (vision_feature_layer =
    mm_vision_select_layer; 'patch' features drop CLIP's CLS token, HF's 'default' strategy)."""
    if vision_config.hidden_size != config["mm_hidden_size"]:
        raise ValueError(
            f"the vision tower's hidden_size ({vision_config.hidden_size}) differs from the checkpoint's "
            f"mm_hidden_size ({config['mm_hidden_size']}); pass the tower named by mm_vision_tower "
            f"({config.get('mm_vision_tower', 'not given')})"
        )
    strategy = SELECT_FEATURES[config.get("mm_vision_select_feature", "patch")]
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config_from_official(config, vocab_size, pad_token_id),
        image_token_id=image_token_id,
        vision_feature_layer=config["mm_vision_select_layer"],
        vision_feature_select_strategy=strategy,
        image_seq_length=patches if strategy == "default" else patches + 1,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        pad_token_id=pad_token_id,
    )


def padded_vocab_size(vocab_size: int, added: int = 2, multiple: int = VOCAB_MULTIPLE) -> int:
    """Rows after appending `added` tokens and padding to `multiple` (32000 -> 32064)."""
    return math.ceil((vocab_size + added) / multiple) * multiple
