"""The CLIP vision tower and Llava projector computed functionally, as the lean engine's prefill
needs them: the same formulas as HF's `CLIPVisionModel` and `LlavaMultiModalProjector` (patch
convolution, class and position embeddings, pre-norm, pre-LN encoder layers with biased attention and
MLP, the selected hidden state, the projector), from the modules' own parameters, and only the
encoder layers up to the selected one. Other towers (SigLIP, several feature layers, interpolated
positions) go through HF (`hf_compat.image_features`); `tests/engine/lean/` checks parity.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from adallava.engine import hf_compat


def lean_vision_reason(llava_model, config) -> str | None:
    """Why the functional tower cannot compute this model's image features (None: it can)."""
    tower = getattr(llava_model, "vision_tower", None)
    vision = _transformer(tower)
    if type(tower).__name__ != "CLIPVisionModel" or not all(
        hasattr(vision, n) for n in ("embeddings", "pre_layrnorm", "encoder")
    ):
        return f"the vision tower is {type(tower).__name__}, not a CLIPVisionModel"
    if not isinstance(config.vision_feature_layer, int):
        return "several vision feature layers are concatenated"
    if config.vision_feature_select_strategy not in ("default", "full"):
        return f"vision_feature_select_strategy {config.vision_feature_select_strategy!r}"
    projector = getattr(llava_model, "multi_modal_projector", None)
    if projector is None or not all(hasattr(projector, n) for n in ("linear_1", "act", "linear_2")):
        return "the projector is not Llava's two-layer MLP"
    return None


def _transformer(tower):
    """The module holding embeddings, pre_layrnorm and encoder: the tower itself in transformers 5,
    its `vision_model` in releases that nested it."""
    return getattr(tower, "vision_model", tower)


def _patch_embeddings(conv, pixel_values: torch.Tensor) -> torch.Tensor:
    """The patch convolution (kernel = stride = patch size, no padding) as one matmul over the image's
    non-overlapping patches: [N, C, H, W] -> [N, G*G, D], patches in row-major order as `flatten(2)`
    of the convolution's output gives them."""
    images, channels, height, width = pixel_values.shape
    patch = conv.kernel_size[0]
    grid_h, grid_w = height // patch, width // patch
    x = pixel_values.to(conv.weight.dtype).reshape(images, channels, grid_h, patch, grid_w, patch)
    x = x.permute(0, 2, 4, 1, 3, 5).reshape(images, grid_h * grid_w, channels * patch * patch)
    return F.linear(x, conv.weight.reshape(conv.weight.shape[0], -1), conv.bias)


def _encoder_layer(layer, hidden: torch.Tensor) -> torch.Tensor:
    """One CLIP encoder layer (pre-LN, non-causal attention): [N, S, D] -> [N, S, D]."""
    attn, mlp = layer.self_attn, layer.mlp
    images, length, size = hidden.shape
    x = F.layer_norm(hidden, (size,), layer.layer_norm1.weight, layer.layer_norm1.bias, layer.layer_norm1.eps)
    heads = attn.num_heads

    def split(linear):
        return F.linear(x, linear.weight, linear.bias).view(images, length, heads, -1).transpose(1, 2)

    q, k, v = split(attn.q_proj), split(attn.k_proj), split(attn.v_proj)
    out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    out = out.transpose(1, 2).reshape(images, length, size)
    hidden = hidden + F.linear(out, attn.out_proj.weight, attn.out_proj.bias)
    x = F.layer_norm(hidden, (size,), layer.layer_norm2.weight, layer.layer_norm2.bias, layer.layer_norm2.eps)
    inner = mlp.activation_fn(F.linear(x, mlp.fc1.weight, mlp.fc1.bias))
    return hidden + F.linear(inner, mlp.fc2.weight, mlp.fc2.bias)


def lean_image_features(llava_model, config, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image features [images * tokens, D] (as `hf_compat.image_features`)."""
    if lean_vision_reason(llava_model, config) is not None:
        return hf_compat.image_features(llava_model, pixel_values)
    vision = _transformer(llava_model.vision_tower)
    embeddings = vision.embeddings
    size = embeddings.image_size
    conv = embeddings.patch_embedding
    if tuple(pixel_values.shape[-2:]) != (size, size) or conv.stride != conv.kernel_size or any(conv.padding):
        return hf_compat.image_features(llava_model, pixel_values)  # HF interpolates or explains
    patches = _patch_embeddings(embeddings.patch_embedding, pixel_values)  # [N, G*G, D]
    cls = embeddings.class_embedding.expand(patches.shape[0], 1, -1)
    hidden = torch.cat([cls, patches], dim=1) + embeddings.position_embedding.weight[: patches.shape[1] + 1]
    norm = vision.pre_layrnorm
    hidden = F.layer_norm(hidden, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    layers = vision.encoder.layers
    index = config.vision_feature_layer
    selected = index if index >= 0 else len(layers) + 1 + index  # hidden_states[0] is the embeddings
    for layer in layers[:selected]:
        hidden = _encoder_layer(layer, hidden)
    if config.vision_feature_select_strategy == "default":
        hidden = hidden[:, 1:]  # drop the class token
    projector = llava_model.multi_modal_projector
    features = projector.linear_2(projector.act(projector.linear_1(hidden)))
    return features.reshape(-1, features.shape[-1])
