"""Test helpers shipped with the package: tiny random HF models and inputs (re-exported here),
and a live loopback server (`adallava.testing.live_server`)."""

from adallava.testing.tiny import (
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    TEXT_CONFIGS,
    tiny_causal_lm,
    tiny_inputs,
    tiny_llava,
    tiny_llava_config,
)

__all__ = [
    "IMAGE_TOKEN_ID",
    "PAD_TOKEN_ID",
    "TEXT_CONFIGS",
    "tiny_causal_lm",
    "tiny_inputs",
    "tiny_llava",
    "tiny_llava_config",
]
