"""Visual-token selection inside the model: PruMerge / PruMerge+ on a Hugging Face CLIP tower, and
splicing the (per-row, different) number of visual tokens into the LLM's input sequence.

PruMerge reads the CLS attention of the tower layer that runs *on* the features LLaVA uses: with
`vision_feature_layer = L` (e.g. -2, the penultimate hidden state) that is layer L + 1, whose q/k
projections are captured with forward hooks (no forked CLIP code). For L = -1 (the last hidden
state) no layer runs on the features; the last layer's own attention is read instead (documented in
docs/token-selection.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from adallava.engine.tokens.prumerge import prumerge, prumerge_plus

# Every AdaptiveConfig.token_selection but 'none'. 'prumerge+' samples its spatial patches as the
# AdaLLaVA checkpoints were trained (from patch 0); 'prumerge+offset' as LLaVA-PruMerge 9d6586e.
METHODS = {
    "prumerge": prumerge,
    "prumerge+": partial(prumerge_plus, sampling="adallava"),
    "prumerge+offset": partial(prumerge_plus, sampling="offset"),
}


@dataclass(frozen=True)
class SelectedImages:
    """Projected visual tokens per row: `tokens` [B, T, D] left-aligned, `lengths` [B] (K_r + 1)."""

    tokens: torch.Tensor
    lengths: torch.Tensor


def _encoder_layers(tower):
    encoder = getattr(tower, "encoder", None)
    layers = getattr(encoder, "layers", None)
    if layers is None or not hasattr(tower, "embeddings"):
        raise ValueError(f"token selection needs a CLIP-style vision tower, got {type(tower).__name__}")
    if getattr(tower.embeddings, "class_embedding", None) is None:
        raise ValueError(
            f"PruMerge ranks patches by their CLS attention, and {type(tower).__name__} has no CLS token; "
            "use token_selection='none' with this tower (or a CLIP tower for PruMerge)"
        )
    return layers


def select_image_tokens(llava_model, pixel_values: torch.Tensor, method: str) -> SelectedImages:
    """Run the tower once, merge its patch features with PruMerge(+), project them. [B, 3, H, W] ->
    SelectedImages with `lengths[r]` tokens of the LLM's hidden size per row."""
    if method not in METHODS:
        raise ValueError(f"token selection must be one of {sorted(METHODS)}, got {method!r}")
    config = llava_model.config
    tower = llava_model.vision_tower
    layers = _encoder_layers(tower)  # first: a tower without CLS cannot be fixed by any setting
    feature_layer = config.vision_feature_layer
    if not isinstance(feature_layer, int):
        raise ValueError("token selection supports a single vision_feature_layer, not a list")
    if config.vision_feature_select_strategy != "default":
        raise ValueError("token selection expects vision_feature_select_strategy='default' (CLS dropped)")
    read = feature_layer + 1 if feature_layer < -1 else -1
    attention = layers[read].self_attn
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        attention.q_proj.register_forward_hook(lambda m, a, out: captured.__setitem__("q", out)),
        attention.k_proj.register_forward_hook(lambda m, a, out: captured.__setitem__("k", out)),
    ]
    try:
        outputs = tower(pixel_values, output_hidden_states=True, return_dict=True)
    finally:
        for hook in hooks:
            hook.remove()
    features = outputs.hidden_states[feature_layer][:, 1:]  # [B, N, C]: the patches LLaVA projects
    merged = METHODS[method](features, captured["q"], captured["k"])  # tokens [B, T, C], lengths [B]
    projected = llava_model.multi_modal_projector(merged.tokens.to(features.dtype))  # [B, T, D]
    return SelectedImages(projected, merged.lengths)


def splice_image_tokens(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None,
    images: SelectedImages,
    image_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Replace each row's run of image placeholders by its selected tokens; rows are re-laid out
    left-padded (their lengths now differ). Returns embeds [B, T', D], attention_mask [B, T'],
    labels [B, T'] (or None) and the number of image tokens per row [B]."""
    batch = embeds.shape[0]
    slots = input_ids == image_token_id  # [B, T]
    per_row = slots.sum(-1)
    if bool((per_row == 0).any()):
        raise ValueError("token selection needs one image per row; a row has no image placeholder")
    real = attention_mask.bool()
    sources, lengths = [], []
    for row in range(batch):  # per-request layout bookkeeping; the tensors move in one gather below
        positions = real[row].nonzero().flatten()
        first = int(slots[row].nonzero()[0])
        before = positions[positions < first]
        after = positions[(positions > first) & ~slots[row][positions]]
        count = int(images.lengths[row])
        # Sources: >= 0 index the original sequence; < 0 index the selected tokens (-1 - k).
        source = torch.cat([before, -1 - torch.arange(count, device=embeds.device), after])
        sources.append(source)
        lengths.append(len(source))
    width = max(lengths)
    index = torch.zeros(batch, width, dtype=torch.long, device=embeds.device)
    new_mask = torch.zeros(batch, width, dtype=attention_mask.dtype, device=embeds.device)
    for row, source in enumerate(sources):
        index[row, width - len(source) :] = source
        new_mask[row, width - len(source) :] = 1
    from_text = index >= 0
    text = embeds.gather(1, index.clamp(min=0)[..., None].expand(-1, -1, embeds.shape[-1]))
    picked = images.tokens.gather(1, (-1 - index).clamp(min=0)[..., None].expand(-1, -1, embeds.shape[-1]))
    new_embeds = torch.where(from_text[..., None], text, picked.to(text.dtype))
    new_embeds = new_embeds * new_mask[..., None].to(new_embeds.dtype)  # padding slots hold zeros
    new_labels = None
    if labels is not None:
        new_labels = labels.gather(1, index.clamp(min=0)).masked_fill(~from_text | (new_mask == 0), -100)
    return new_embeds, new_mask, new_labels, images.lengths.to(torch.long)
