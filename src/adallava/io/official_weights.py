"""The official AdaLLaVA checkpoint's weights: key mapping, scheduler shape checks, vocabulary growth.

The mapping follows transformers' own LLaVA conversion
(`transformers/models/llava/convert_llava_weights_to_hf.py`):
- LLaMA keys go under the language model, `model.mm_projector.{0,2}` become
  `model.multi_modal_projector.linear_{1,2}`, the CLIP tower (a separate folder) `model.vision_tower`;
- the LLaVA repo marks the image with the index -200 instead of a token, so the tokenizer gains
  `<image>` (id V) and `<pad>` (id V+1), and the embeddings and lm_head grow to a multiple of 64 rows;
  every new row is drawn from N(mu, 1e-5 * Sigma) of the existing embedding rows.
The scheduler's weights go to our latency encoder and scheduler head one to one.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from adallava.io.official_format import official_num_switches

# (official prefix, part, our prefix). "llava" keys go to the HF Llava, "adaptive" keys to
# adaptive.safetensors. Prefixes do not overlap, so the order does not matter.
OFFICIAL_KEY_MAP = (
    ("model.embed_tokens.", "llava", "model.language_model.embed_tokens."),
    ("model.layers.", "llava", "model.language_model.layers."),
    ("model.norm.", "llava", "model.language_model.norm."),
    ("lm_head.", "llava", "lm_head."),
    ("model.mm_projector.0.", "llava", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "llava", "model.multi_modal_projector.linear_2."),
    # Present only when the tower was fine-tuned and saved with the model.
    ("model.vision_tower.vision_tower.vision_model.", "llava", "model.vision_tower."),
    ("scheduler.mlp_head.", "adaptive", "scheduler.head."),
    ("scheduler.scheduler_up_proj.net.", "adaptive", "latency_encoder.net."),
)
# The official scheduler's weights and their names here.
OFFICIAL_SCHEDULER_KEYS = {
    f"scheduler.{official}.{param}": f"{ours}.{param}"
    for official, ours in (
        ("mlp_head", "scheduler.head"),
        ("scheduler_up_proj.net.0", "latency_encoder.net.0"),  # LayerNorm(2F)
        ("scheduler_up_proj.net.1", "latency_encoder.net.1"),  # Linear(2F, hidden)
        ("scheduler_up_proj.net.3", "latency_encoder.net.3"),  # Linear(hidden, hidden); net.2 is GELU
    )
    for param in ("weight", "bias")
}
# Buffers that older transformers saved and current ones recompute.
DROPPED_KEY_SUFFIXES = (".rotary_emb.inv_freq", "embeddings.position_ids")
NEW_ROW_COVARIANCE_SCALE = 1e-5


# ---- key mapping (pure) -------------------------------------------------------------------------


def is_dropped_key(key: str) -> bool:
    return key.endswith(DROPPED_KEY_SUFFIXES)


def map_official_key(key: str) -> tuple[str, str] | None:
    """Official key -> (part, our key), part "llava" or "adaptive"; None if the key is not known."""
    for prefix, part, ours in OFFICIAL_KEY_MAP:
        if key.startswith(prefix):
            return part, ours + key[len(prefix) :]
    return None


def official_key_for(our_key: str) -> str | None:
    """The official name of one of our Llava keys (for error messages); None for vision tower keys."""
    for prefix, part, ours in OFFICIAL_KEY_MAP:
        if part == "llava" and our_key.startswith(ours) and not ours.startswith("model.vision_tower."):
            return prefix + our_key[len(ours) :]
    return None


def map_official_state_dict(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split and rename an official state dict into (HF Llava keys, adaptive keys). Raises ValueError
    listing keys that are neither mapped nor known buffers."""
    llava, adaptive, unknown = {}, {}, []
    for key, tensor in state.items():
        if is_dropped_key(key):
            continue
        mapped = map_official_key(key)
        if mapped is None:
            unknown.append(key)
            continue
        part, ours = mapped
        (llava if part == "llava" else adaptive)[ours] = tensor
    if unknown:
        raise ValueError(
            f"the official checkpoint has {len(unknown)} key(s) this conversion does not know: "
            f"{listing(unknown)}. Known prefixes: {', '.join(p for p, _, _ in OFFICIAL_KEY_MAP)}"
        )
    return llava, adaptive


def map_vision_tower_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPVisionModel / CLIPModel state dict -> HF Llava's `model.vision_tower.*` keys.

    Older CLIP folders (e.g. openai/clip-vit-large-patch14-336) store `vision_model.*` (and, for a full
    CLIPModel, `text_model.*` and projections, dropped here); transformers 5 saves a CLIPVisionModel
    without that prefix. HF Llava's tower holds the keys without it."""
    prefix = "vision_model."
    has_prefix = any(key.startswith(prefix) for key in state)
    out = {}
    for key, tensor in state.items():
        if has_prefix and not key.startswith(prefix):
            continue  # text tower, projections, logit scale of a CLIPModel
        name = key[len(prefix) :] if has_prefix else key
        if not is_dropped_key(name):
            out["model.vision_tower." + name] = tensor
    return out


# ---- scheduler and vocabulary -------------------------------------------------------------------


def check_adaptive_shapes(config: dict[str, Any], adaptive: dict[str, torch.Tensor]) -> int:
    """Check the official scheduler weights against the config; return the latency frequencies (half the
    latency encoder's input width). Raises ValueError naming the key and the expected shape."""
    hidden = config["hidden_size"]
    missing = [official for official, ours in OFFICIAL_SCHEDULER_KEYS.items() if ours not in adaptive]
    if missing:
        raise ValueError(f"the official checkpoint lacks the scheduler weights {listing(missing)}")
    switches = official_num_switches(config)
    head = adaptive["scheduler.head.weight"]
    if tuple(head.shape) != (switches, hidden):
        kind = config["scheduler_type"]
        raise ValueError(
            f"scheduler.mlp_head.weight is {tuple(head.shape)}, but scheduler_type {kind!r} with "
            f"num_hidden_layers={config['num_hidden_layers']}, "
            f"num_prefix_layers={config['num_prefix_layers']}, "
            f"num_attention_heads={config['num_attention_heads']} needs ({switches}, {hidden})"
        )
    width = adaptive["latency_encoder.net.0.weight"].shape[0]
    up = tuple(adaptive["latency_encoder.net.1.weight"].shape)
    if width % 2 or up != (hidden, width):
        raise ValueError(
            f"scheduler.scheduler_up_proj.net.1.weight is {up}; expected ({hidden}, {width}) after a "
            f"LayerNorm of even width {width}"
        )
    return width // 2


def extend_vocabulary(
    embed: torch.Tensor, lm_head: torch.Tensor, new_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grow the embedding and lm_head matrices [V, D] to [new_size, D] as transformers' LLaVA conversion
    does: each new row is an independent draw from N(mu, 1e-5 * Sigma), mu and Sigma the mean and
    covariance of the existing embedding rows (for the lm_head rows too).

    Drawn as mu + sqrt(1e-5 / V) * (E - mu)^T w with w ~ N(0, I_V), which has exactly that covariance and
    needs neither the D x D matrix nor its factorisation (singular when V <= D)."""
    old, _ = embed.shape
    extra = new_size - old
    if extra < 0:
        raise ValueError(f"cannot shrink the vocabulary from {old} to {new_size} rows")
    rows = embed.float()
    mean = rows.mean(dim=0)  # [D]
    centred = rows - mean  # [V, D]
    noise = torch.randn(2 * extra, old, generator=generator)  # [2X, V]
    samples = mean + (noise @ centred) * math.sqrt(NEW_ROW_COVARIANCE_SCALE / old)  # [2X, D]
    return (
        torch.cat([embed, samples[:extra].to(embed.dtype)]),
        torch.cat([lm_head, samples[extra:].to(lm_head.dtype)]),
    )


def listing(items: list[str], limit: int = 8) -> str:
    """The first `limit` items for an error message (a 7B checkpoint can miss hundreds of keys)."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
