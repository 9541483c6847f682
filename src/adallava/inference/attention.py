"""The latency token's attention over the image patches (AdaLLaVA paper Fig. 4, 10): runs the model
with a forward hook on one prefix layer's self-attention and reads the latency token's row.
`adallava.report.plots.plot_latency_attention` draws what this returns; plotting never runs the model."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from adallava.engine import hf_compat
from adallava.modules.latency import insert_at


@torch.no_grad()
def latency_token_attention(model, inputs: Mapping[str, torch.Tensor], budget, layer: int | None = None):
    """Attention from each row's latency token to its image tokens, averaged over heads.

    model: an `AdaLlava` whose text model runs eager attention (load it with
    `attn_implementation="eager"`; SDPA and flash kernels never form the weights). inputs: the
    processor's batch (input_ids, attention_mask, pixel_values). budget: as for `model(...)`.
    layer: a prefix layer in [0, P-1]; default P-1, whose output the scheduler reads. Upper layers
    are refused: rows that skip them have no attention there.
    Returns float32 [B, image tokens] (CPU), each row summing to <= 1 (the rest goes to text tokens).
    """
    if budget is None:
        raise ValueError("budget is required: the latency token exists only when a budget is given")
    prefix = model.num_prefix
    layer = prefix - 1 if layer is None else layer
    if not 0 <= layer < prefix:
        raise ValueError(f"layer must be a prefix layer in [0, {prefix - 1}], got {layer}")
    attention = model.text_model.layers[layer].self_attn
    implementation = hf_compat.attention_implementation(attention.config)
    if implementation != "eager":
        raise ValueError(
            f"the model's text attention is {implementation!r}, which returns no attention weights; load it "
            "with attn_implementation='eager'"
        )
    input_ids = inputs["input_ids"]
    captured: list[torch.Tensor] = []

    def hook(module, args, output):  # eager attention returns (attn_output, attn_weights [B, H, T, T])
        captured.append(hf_compat.attention_weights(output).detach())

    handle = attention.register_forward_hook(hook)
    try:
        out = model(**inputs, budget=budget, use_cache=False)
    finally:
        handle.remove()
    if len(captured) != 1 or captured[0] is None:
        raise RuntimeError(f"expected one attention map from layer {layer}, got {len(captured)}")
    weights = captured[0].float()  # [B, H, T+1, T+1]
    positions = out.latency_positions.to(weights.device)  # [B]
    rows = torch.arange(weights.shape[0], device=weights.device)
    from_latency = weights[rows, :, positions].mean(1)  # [B, T+1]: over keys, averaged over heads
    # The latency token was inserted after the prompt; image tokens before it keep their indices,
    # and inserting a False there keeps the mask aligned in every case.
    is_image = insert_at(input_ids == model.config.image_token_id, out.latency_positions, False)
    counts = is_image.sum(-1)
    if bool((counts != counts[0]).any()) or int(counts[0]) == 0:
        raise ValueError(f"every row needs the same, non-zero number of image tokens; got {counts.tolist()}")
    return from_latency[is_image.to(weights.device)].view(len(rows), int(counts[0])).cpu()  # [B, I]
