"""PruMerge and PruMerge+ (Shang et al., arXiv 2403.15388) as pure, batched tensor functions.

The authors' code (42Shawn/LLaVA-PruMerge, ``llava/model/multimodal_encoder/clip_encoder.py``,
``token_prune_merge_advanced`` and ``token_prune_merge_advanced_plus``) merges tokens in a Python
double loop over images and kept tokens. Here one ``[B, S, N]`` similarity, one ``topk`` and one
``embedding_bag`` do the same work for the whole batch. ``docs/token-selection.md`` lists every fact
taken from their code, with its source line, and the few places where we had to choose.

Inputs are what the CLIP tower already computed: ``features`` are the patch tokens LLaVA feeds the
projector (``hidden_states[-2][:, 1:]``), ``queries`` and ``keys`` are the raw outputs of
``q_proj`` / ``k_proj`` of the *last* encoder layer (the layer that reads that hidden state), CLS
first, heads not split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

NEIGHBOURS = 32
"""Key-similar patches merged into each kept patch (the authors' ``topk(..., k=32)``)."""

_IQR_FENCE = 1.5
"""Tukey's upper fence: an attention is an outlier when above Q3 + 1.5 IQR."""

SPATIAL_SAMPLINGS = ("adallava", "offset")
"""PruMerge+'s spatial grids: 'adallava' starts at patch 0 (AdaLLaVA's code, the official
``*-prumerge-plus`` checkpoints, LLaVA-PruMerge's main branch); 'offset' starts at ``int(step / 6)``
(LLaVA-PruMerge commit ``9d6586e``, April 2024). See docs/token-selection.md."""


@dataclass(frozen=True)
class MergedTokens:
    """Merged visual tokens of a batch, left-aligned and zero-padded.

    Row ``r`` holds ``lengths[r] = K_r + 1`` tokens: the ``K_r`` kept patches in the authors' order
    (descending CLS attention, then PruMerge+'s spatial patches by position), then the extra token.

    Attributes:
        tokens: ``[B, T, C]`` merged features, ``T = max_r lengths[r]``; zeros past ``lengths[r]``.
        lengths: ``[B]`` int64, tokens per row including the extra token.
        mask: ``[B, T]`` bool, True where ``tokens`` holds a real token.
        kept_indices: ``[B, T - 1]`` int64, patch index (0..N-1) of each kept token, ``-1`` for
            padding; the extra token has no patch index.
    """

    tokens: Tensor
    lengths: Tensor
    mask: Tensor
    kept_indices: Tensor

    def unpad(self) -> list[Tensor]:
        """Per-row tokens, ``[K_r + 1, C]`` each (views, no copies)."""
        return [row[:n] for row, n in zip(self.tokens, self.lengths.tolist(), strict=True)]


def prumerge(
    features: Tensor, queries: Tensor, keys: Tensor, *, neighbours: int = NEIGHBOURS
) -> MergedTokens:
    """PruMerge: keep the CLS-attention outliers, merge key-similar patches into them.

    Args:
        features: ``[B, N, C]`` patch features (CLS excluded).
        queries: ``[B, N + 1, D]`` ``q_proj`` output of the layer read, CLS first.
        keys: ``[B, N + 1, D]`` ``k_proj`` output of the same layer, CLS first.
        neighbours: patches merged into each kept patch (clamped to ``N - 1``).

    Returns:
        ``MergedTokens`` with ``K_r = int(N * ratio_r)`` kept patches per row plus the extra token.
    """
    attn = cls_attention(queries, keys)  # [B, N]
    _check_features(features, attn)
    num_kept = kept_count(outlier_count(attn), attn.shape[1])  # [B]
    selected, num_selected = _order_selection(attn, num_kept, spatial=None)
    return _merge(features, keys, attn, selected, num_selected, neighbours)


def prumerge_plus(
    features: Tensor,
    queries: Tensor,
    keys: Tensor,
    *,
    neighbours: int = NEIGHBOURS,
    sampling: str = "adallava",
) -> MergedTokens:
    """PruMerge+: PruMerge whose kept set is topped up with spatially uniform patches.

    Same arguments as ``prumerge``, plus ``sampling`` (one of ``SPATIAL_SAMPLINGS``): after the
    ``K_r`` outliers come the sampled positions ``start, start + stride, ... < N - 1`` that are not
    already kept, in ascending order, with ``step = int(1 / ratio)``, ``stride = int(step / 3)`` and
    ``start = 0`` ('adallava', the AdaLLaVA checkpoints' rule) or ``int(step / 6)`` ('offset').
    """
    attn = cls_attention(queries, keys)  # [B, N]
    _check_features(features, attn)
    counts = outlier_count(attn)  # [B]
    num_kept = kept_count(counts, attn.shape[1])  # [B]
    spatial = spatial_mask(counts, attn.shape[1], sampling=sampling)  # [B, N]
    selected, num_selected = _order_selection(attn, num_kept, spatial=spatial)
    return _merge(features, keys, attn, selected, num_selected, neighbours)


def cls_attention(queries: Tensor, keys: Tensor) -> Tensor:
    """CLS-to-patch attention ``softmax(q_cls k^T / sqrt(D))[1:]`` over all ``N + 1`` keys.

    Computed in at least float32 (the authors ran it in the tower's fp16). Returns ``[B, N]``.
    """
    if queries.dim() != 3 or queries.shape != keys.shape:
        raise ValueError(
            f"queries and keys must both be [B, N + 1, D] (CLS first); got {tuple(queries.shape)} "
            f"and {tuple(keys.shape)}"
        )
    if queries.shape[1] < 3:
        raise ValueError(
            f"queries/keys need a CLS token and at least 2 patches; got {queries.shape[1]} tokens"
        )
    dtype = _compute_dtype(queries)
    q_cls = queries[:, :1].to(dtype)  # [B, 1, D]
    scores = q_cls @ keys.to(dtype).transpose(1, 2) / math.sqrt(queries.shape[-1])  # [B, 1, N + 1]
    # Softmax is row-wise, so only the CLS row of the full attention matrix is needed.
    return scores.softmax(dim=-1)[:, 0, 1:]  # [B, N]


def outlier_count(attn: Tensor) -> Tensor:
    """Patches per row whose attention is above Q3 + 1.5 IQR. ``attn`` ``[B, N]`` -> ``[B]`` int64.

    Bit-for-bit what the authors' ``outlier_dectection`` computed with NumPy 1.x on one image: the
    attention cast to float32; ``np.percentile`` 'linear' quartiles, whose ``b - a`` is taken in
    float32 and the interpolation in float64; the fence compared with the float32 values in float32
    (NumPy 1.x value-based casting). NumPy 2 and ``torch.quantile`` differ in the last bits.
    """
    values = attn.to(torch.float32)  # [B, N]
    ordered = values.sort(dim=-1).values  # [B, N]
    q1 = _numpy1_linear_quantile(ordered, 0.25)  # [B] float64
    q3 = _numpy1_linear_quantile(ordered, 0.75)  # [B] float64
    fence = (q3 + _IQR_FENCE * (q3 - q1)).to(torch.float32)  # [B]
    return (values > fence[:, None]).sum(dim=-1)  # [B]


def kept_count(counts: Tensor, num_patches: int) -> Tensor:
    """``int(N * ratio)`` with ``ratio = count / N`` in float64, as the authors wrote it.

    The round trip is not the identity for every N (N = 196, count = 1 gives 0), so it is kept.
    """
    ratio = counts.to(torch.float64) / num_patches  # [B]
    return (num_patches * ratio).floor().to(torch.int64)  # [B]


def spatial_mask(counts: Tensor, num_patches: int, *, sampling: str = "adallava") -> Tensor:
    """PruMerge+'s uniformly sampled positions, ``[B, N]`` bool (before removing kept patches).

    ``arange(start, N - 1, int(step / 3))`` with ``step = int(1 / ratio)`` and ``start = 0``
    ('adallava': Jav1Star/AdaLLaVA-X ``prumerge_utils.py``, ``prune_merge_plus``, and
    42Shawn/LLaVA-PruMerge from ``6901bd7`` on) or ``start = int(step / 6)`` ('offset':
    LLaVA-PruMerge ``9d6586e``). The authors wrote the end as 575 for N = 576. A row without
    outliers divides by zero in their code; here it gets no samples in either variant.
    """
    if sampling not in SPATIAL_SAMPLINGS:
        raise ValueError(f"PruMerge+ sampling must be one of {SPATIAL_SAMPLINGS}, got {sampling!r}")
    ratio = counts.to(torch.float64) / num_patches  # [B]
    has_outliers = counts > 0  # [B]
    step = torch.where(has_outliers, (1.0 / ratio).floor(), torch.zeros_like(ratio)).to(torch.int64)  # [B]
    start = step // 6 if sampling == "offset" else torch.zeros_like(step)  # [B]
    # The IQR rule flags under ~25% of patches, so step >= 4 and stride >= 1; clamp for tiny N only.
    stride = (step // 3).clamp(min=1)  # [B]
    pos = torch.arange(num_patches, device=counts.device)  # [N]
    offset = pos[None, :] - start[:, None]  # [B, N]
    on_grid = (offset >= 0) & (offset % stride[:, None] == 0) & (pos[None, :] < num_patches - 1)  # [B, N]
    return on_grid & has_outliers[:, None]  # [B, N]


def _numpy1_linear_quantile(ordered: Tensor, q: float) -> Tensor:
    """NumPy 1.x ``percentile(x, 100 q)`` ('linear') of each sorted float32 row. -> ``[B]`` float64."""
    n = ordered.shape[-1]
    virtual = (n - 1) * q
    lo = math.floor(virtual)
    hi = lo if virtual >= n - 1 else lo + 1
    gamma = virtual - lo
    a, b = ordered[:, lo], ordered[:, hi]  # [B] float32 each
    diff = (b - a).to(torch.float64)  # NumPy subtracts the float32 neighbours before promoting.
    if gamma < 0.5:
        return a.to(torch.float64) + diff * gamma
    return b.to(torch.float64) - diff * (1 - gamma)


def _order_selection(attn: Tensor, num_kept: Tensor, spatial: Tensor | None) -> tuple[Tensor, Tensor]:
    """Selected patch indices in the authors' token order, ``[B, S]`` padded with -1, and ``[B]`` counts.

    Order: kept patches by descending attention (``topk``), then spatial samples not already kept,
    by ascending position.
    """
    batch, n = attn.shape
    k_max = int(num_kept.max().item()) if batch else 0
    top = attn.topk(k_max, dim=-1).indices  # [B, k_max], sorted by descending attention
    rank = torch.arange(k_max, device=attn.device).expand(batch, k_max)  # [B, k_max]
    is_kept_slot = rank < num_kept[:, None]  # [B, k_max]
    if spatial is None:
        return top.masked_fill(~is_kept_slot, -1), num_kept

    kept = torch.zeros(batch, n, dtype=torch.bool, device=attn.device)  # [B, N]
    kept.scatter_(1, top, is_kept_slot)
    added = spatial & ~kept  # [B, N]
    pos = torch.arange(n, device=attn.device).expand(batch, n)  # [B, N]
    attn_rank = torch.zeros_like(pos).scatter(1, top, rank)  # [B, N], meaningful where kept
    # Sort key: kept patches by attention rank, then added ones by position, then the rest.
    key = torch.where(kept, attn_rank, torch.where(added, n + pos, 2 * n + pos))  # [B, N]
    num_selected = num_kept + added.sum(dim=-1)  # [B]
    s_max = int(num_selected.max().item())
    order = key.argsort(dim=-1)[:, :s_max]  # [B, S]
    in_row = torch.arange(s_max, device=attn.device)[None, :] < num_selected[:, None]  # [B, S]
    return order.masked_fill(~in_row, -1), num_selected


def _merge(
    features: Tensor, keys: Tensor, attn: Tensor, selected: Tensor, num_selected: Tensor, neighbours: int
) -> MergedTokens:
    """Each selected patch plus the attention-weighted sum of its most key-similar other patches;
    then the attention-weighted sum of the unselected patches as one extra token.

    Weights are raw CLS attentions (not normalised). The kept tokens are ``k + 1``-term weighted
    sums, done by one ``embedding_bag`` (S * (k + 1) * C work, no ``[B, S, k, C]`` gather); the
    extra token is one dense ``[B, 1, N] @ [B, N, C]``.
    """
    if neighbours < 1:
        raise ValueError(f"neighbours must be >= 1 (the authors use {NEIGHBOURS}); got {neighbours}")
    batch, n, width = features.shape
    s_max = selected.shape[1]
    k = min(neighbours, n - 1)  # the authors' fixed 32 needs N >= 33
    dtype = _compute_dtype(features)
    x = features.to(dtype)  # [B, N, C]
    attn = attn.to(dtype)  # [B, N]
    valid = selected >= 0  # [B, S]
    safe = selected.clamp(min=0)  # [B, S]

    unit_keys = F.normalize(keys[:, 1:].to(dtype), p=2, dim=-1)  # [B, N, D]
    sel_keys = unit_keys.gather(1, safe[..., None].expand(-1, -1, unit_keys.shape[-1]))  # [B, S, D]
    sim = sel_keys @ unit_keys.transpose(1, 2)  # [B, S, N] cosine similarity
    sim.scatter_(2, safe[..., None], float("-inf"))  # a patch is not its own neighbour
    nbr = sim.topk(k, dim=-1).indices  # [B, S, k]
    nbr_attn = attn.gather(1, nbr.reshape(batch, s_max * k)).reshape(batch, s_max, k)  # [B, S, k]

    # Bag j of row b: patch selected[b, j] with weight 1, then its neighbours; padding bags weigh 0.
    bag = torch.cat([safe[..., None], nbr], dim=-1)  # [B, S, k + 1]
    bag_weights = torch.cat([torch.ones_like(nbr_attn[..., :1]), nbr_attn], dim=-1) * valid[..., None]
    row_offset = torch.arange(batch, device=features.device)[:, None, None] * n  # [B, 1, 1]
    kept_tokens = torch.zeros(batch, s_max + 1, width, dtype=dtype, device=features.device)  # [B, S + 1, C]
    if s_max:
        kept_tokens[:, :s_max] = F.embedding_bag(
            (bag + row_offset).reshape(batch * s_max, k + 1),  # [B * S, k + 1] rows of x flattened
            x.reshape(batch * n, width),  # [B * N, C]
            per_sample_weights=bag_weights.reshape(batch * s_max, k + 1),
            mode="sum",
        ).reshape(batch, s_max, width)  # [B, S, C]

    # Padding slots write into a spare column N, so they cannot clear a real patch.
    unselected = torch.ones(batch, n + 1, dtype=torch.bool, device=features.device)  # [B, N + 1]
    unselected.scatter_(1, selected.masked_fill(~valid, n), False)
    extra = (attn * unselected[:, :n])[:, None, :] @ x  # [B, 1, C]
    # The extra token goes right after each row's last kept token, not at column S.
    tokens = kept_tokens.scatter(1, num_selected[:, None, None].expand(batch, 1, width), extra)

    lengths = num_selected + 1  # [B]
    mask = torch.arange(s_max + 1, device=features.device)[None, :] < lengths[:, None]  # [B, S + 1]
    return MergedTokens(tokens=tokens.to(features.dtype), lengths=lengths, mask=mask, kept_indices=selected)


def _check_features(features: Tensor, attn: Tensor) -> None:
    if features.dim() != 3 or features.shape[:2] != attn.shape:
        raise ValueError(
            f"features must be [B, N, C] with B, N matching queries/keys [B, N + 1, D] = "
            f"[{attn.shape[0]}, {attn.shape[1] + 1}, D]; got {tuple(features.shape)}"
        )


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)
