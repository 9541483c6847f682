"""Tiny random Hugging Face Llava models and inputs, for tests, demos and the cost-model checks.

Every model here is a stock `transformers` class with a small config, so anything that works on
them works unchanged on a real 7B checkpoint of the same family.
"""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    MistralConfig,
    Qwen2Config,
)

from adallava.engine import hf_compat

TEXT_CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}
IMAGE_TOKEN_ID = 3
PAD_TOKEN_ID = 0


def tiny_llava_config(
    text_model: str = "llama",
    num_layers: int = 8,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int = 128,
    vocab_size: int = 96,
    image_size: int = 32,
    patch_size: int = 8,
    vision_layers: int = 2,
    vision_hidden: int = 48,
    attn_implementation: str = "eager",
    text_kwargs: dict | None = None,
) -> LlavaConfig:
    """A LlavaConfig with a CLIP tower and a Llama/Qwen2/Mistral text model of the given shape;
    `text_kwargs` go to the text config (e.g. sliding_window for Mistral)."""
    if text_model not in TEXT_CONFIGS:
        raise ValueError(f"text_model must be one of {sorted(TEXT_CONFIGS)}, got {text_model!r}")
    text_config = TEXT_CONFIGS[text_model](
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=256,
        pad_token_id=PAD_TOKEN_ID,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        **(text_kwargs or {}),
    )
    vision_config = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=(image_size // patch_size) ** 2,
        tie_word_embeddings=False,
    )
    hf_compat.set_attention_implementation(config, attn_implementation)
    return config


def tiny_llava(seed: int = 0, **config_kwargs) -> LlavaForConditionalGeneration:
    """A randomly initialised tiny Llava in eval mode (deterministic for a given seed)."""
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(tiny_llava_config(**config_kwargs))
    # A random model may emit the image placeholder, which then fails re-encoding; never let it.
    model.generation_config.suppress_tokens = [IMAGE_TOKEN_ID]
    return model.eval()


def tiny_causal_lm(text_model: str = "llama", seed: int = 0, **config_kwargs):
    """A randomly initialised tiny text-only causal LM (Llama / Qwen2 / Mistral), eval mode."""
    from transformers import AutoModelForCausalLM

    config = tiny_llava_config(text_model=text_model, **config_kwargs).text_config
    torch.manual_seed(seed)
    implementation = hf_compat.attention_implementation(config)
    return AutoModelForCausalLM.from_config(config, attn_implementation=implementation).eval()


def tiny_inputs(
    config: LlavaConfig,
    text_lengths: list[int],
    padding_side: str = "right",
    seed: int = 0,
    with_image: bool = True,
) -> dict[str, torch.Tensor]:
    """A padded batch: each row is [image tokens] + `text_lengths[r]` random text tokens.

    Returns input_ids [B, T], attention_mask [B, T] and (if with_image) pixel_values [B, 3, S, S].
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    gen = torch.Generator().manual_seed(seed)
    vocab = config.text_config.vocab_size
    n_image = config.image_seq_length if with_image else 0
    rows = []
    for length in text_lengths:
        text = torch.randint(4, vocab, (length,), generator=gen)
        rows.append(torch.cat([torch.full((n_image,), IMAGE_TOKEN_ID), text]))
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), PAD_TOKEN_ID)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if padding_side == "right" else slice(width - len(row), width)
        input_ids[i, span] = row
        attention_mask[i, span] = 1
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if with_image:
        size = config.vision_config.image_size
        out["pixel_values"] = torch.randn(len(rows), 3, size, size, generator=gen)
    return out
