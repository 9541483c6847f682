"""PruMerge / PruMerge+ against a plain loop implementation of the authors' published algorithm.

``reference_prumerge`` follows the structure of ``token_prune_merge_advanced(_plus)`` in
42Shawn/LLaVA-PruMerge (one image at a time, one kept token at a time, the "rest" list built as
other kept tokens then the unselected ones) and is written for reading, not speed. The benchmark in
``benchmarks/bench_prumerge.py`` times it against the vectorised version.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from adallava.engine.tokens import MergedTokens, prumerge, prumerge_plus
from adallava.engine.tokens.prumerge import cls_attention, kept_count, outlier_count, spatial_mask

# ---------------------------------------------------------------------------------------------
# Loop reference
# ---------------------------------------------------------------------------------------------


def _numpy1_percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, 100 q)`` as NumPy 1.x computed it for a float32 array."""
    s = np.sort(values)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    gamma = pos - lo
    diff = float(s[hi] - s[lo])  # float32 subtraction, then float64
    if gamma < 0.5:
        return float(s[lo]) + diff * gamma
    return float(s[hi]) - diff * (1 - gamma)


def _outlier_ratio(cls_attn: torch.Tensor) -> float:
    """The authors' ``outlier_dectection`` for one image: share of attentions above Q3 + 1.5 IQR."""
    values = cls_attn.to(torch.float32).numpy()
    q1, q3 = _numpy1_percentile(values, 0.25), _numpy1_percentile(values, 0.75)
    fence = np.float32(q3 + 1.5 * (q3 - q1))  # NumPy 1.x compared a float32 array in float32
    return sum(1 for a in values if a > fence) / len(values)


def reference_prumerge(
    features: torch.Tensor,
    queries: torch.Tensor,
    keys: torch.Tensor,
    *,
    plus: bool = False,
    offset: bool = False,
) -> list[torch.Tensor]:
    """Per image, per kept token. Returns one ``[K + 1, C]`` tensor per image. PruMerge+'s grid
    starts at 0 (AdaLLaVA's ``prune_merge_plus``) or, with ``offset``, at ``int(step / 6)``."""
    dtype = torch.promote_types(features.dtype, torch.float32)
    out = []
    for b in range(features.shape[0]):
        x = features[b].to(dtype)  # [N, C]
        q, k = queries[b].to(dtype), keys[b].to(dtype)  # [N + 1, D]
        n = x.shape[0]
        attn = torch.softmax(q @ k.T * q.shape[-1] ** -0.5, dim=-1)  # [N + 1, N + 1]
        cls_attn = attn[0, 1:]  # [N]

        ratio = _outlier_ratio(cls_attn)
        idx = torch.topk(cls_attn, int(n * ratio), largest=True).indices.tolist()
        if plus and ratio > 0:
            step = int(1 / ratio)
            kept = set(idx)
            start = int(step / 6) if offset else 0
            idx += [p for p in range(start, n - 1, max(int(step / 3), 1)) if p not in kept]
        compl = sorted(set(range(n)) - set(idx))

        unit_keys = F.normalize(k[1:], p=2, dim=-1)  # [N, D]
        tokens = []
        for i, p in enumerate(idx):
            rest = idx[:i] + idx[i + 1 :] + compl
            sims = unit_keys[rest] @ unit_keys[p]  # [N - 1]
            top = torch.topk(sims, min(32, n - 1), largest=True).indices.tolist()
            neighbours = [rest[j] for j in top]
            weighted = (x[neighbours] * cls_attn[neighbours, None]).sum(dim=0)  # not normalised
            tokens.append(x[p] + weighted)
        tokens.append((x[compl] * cls_attn[compl, None]).sum(dim=0))  # the extra token
        out.append(torch.stack(tokens).to(features.dtype))
    return out


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def make_inputs(batch: int, n: int, width: int, qk_width: int, seed: int = 0, dtype=torch.float32):
    """Random features / queries / keys; the query scale differs per row, so rows keep different
    numbers of tokens (sharper attention -> fewer outliers relative to a heavier tail)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, n, width, generator=g)
    scale = torch.linspace(0.6, 2.0, batch)[:, None, None]  # [B, 1, 1]
    queries = torch.randn(batch, n + 1, qk_width, generator=g) * scale
    keys = torch.randn(batch, n + 1, qk_width, generator=g)
    return features.to(dtype), queries.to(dtype), keys.to(dtype)


def _assert_matches_reference(merged: MergedTokens, reference: list[torch.Tensor]) -> None:
    rows = merged.unpad()
    assert [r.shape[0] for r in rows] == [r.shape[0] for r in reference]
    for got, want in zip(rows, reference, strict=True):
        assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Equality with the loop reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prumerge_matches_loop_reference(seed):
    features, queries, keys = make_inputs(5, 96, 24, 32, seed=seed)
    merged = prumerge(features, queries, keys)
    assert len(set(merged.lengths.tolist())) > 1, "rows should keep different numbers of tokens"
    _assert_matches_reference(merged, reference_prumerge(features, queries, keys))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sampling", ["adallava", "offset"])
def test_prumerge_plus_matches_loop_reference(seed, sampling):
    features, queries, keys = make_inputs(5, 96, 24, 32, seed=seed)
    merged = prumerge_plus(features, queries, keys, sampling=sampling)
    assert len(set(merged.lengths.tolist())) > 1
    expected = reference_prumerge(features, queries, keys, plus=True, offset=sampling == "offset")
    _assert_matches_reference(merged, expected)


def test_llava_grid_matches_loop_reference():
    # 24 x 24 patches as in LLaVA-1.5 (CLIP ViT-L/14 at 336 px), narrow channels to stay fast.
    features, queries, keys = make_inputs(2, 576, 16, 32, seed=3)
    _assert_matches_reference(prumerge(features, queries, keys), reference_prumerge(features, queries, keys))
    _assert_matches_reference(
        prumerge_plus(features, queries, keys), reference_prumerge(features, queries, keys, plus=True)
    )


def test_fewer_patches_than_neighbours_matches_reference():
    # N - 1 < 32: the authors' topk would fail; both sides clamp the neighbour count to N - 1.
    features, queries, keys = make_inputs(3, 20, 8, 16, seed=4)
    _assert_matches_reference(prumerge(features, queries, keys), reference_prumerge(features, queries, keys))


def test_float64_inputs_match_reference():
    features, queries, keys = make_inputs(3, 64, 12, 16, seed=5, dtype=torch.float64)
    merged = prumerge(features, queries, keys)
    assert merged.tokens.dtype == torch.float64
    _assert_matches_reference(merged, reference_prumerge(features, queries, keys))


def test_rows_are_independent_of_their_batch():
    # The authors' inference code pools the quartiles over the batch; ours is per image.
    features, queries, keys = make_inputs(4, 96, 24, 32, seed=6)
    batched = prumerge_plus(features, queries, keys).unpad()
    for r in range(4):
        alone = prumerge_plus(features[r : r + 1], queries[r : r + 1], keys[r : r + 1]).unpad()[0]
        assert_close(batched[r], alone, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# The IQR rule and the kept count
# ---------------------------------------------------------------------------------------------


def test_kept_count_follows_iqr_rule():
    features, queries, keys = make_inputs(6, 96, 24, 32, seed=7)
    merged = prumerge(features, queries, keys)
    attn = torch.softmax(queries @ keys.transpose(1, 2) / math.sqrt(32), dim=-1)[:, 0, 1:]  # [B, N]
    expected = [int(96 * _outlier_ratio(row)) for row in attn]
    assert (merged.lengths - 1).tolist() == expected
    assert all(k > 0 for k in expected)


def test_outlier_count_matches_numpy1_percentile():
    # Golden values from NumPy 1.26.4: np.percentile(y, 25/75) and the count above the fence.
    y = torch.tensor([((i * 37) % 50 + 1) ** 4 / 4096.0 for i in range(50)], dtype=torch.float32)
    assert outlier_count(y[None]).tolist() == [3]
    # Nine values where the fence, 0x1.8d93e18p-4 in float64, rounds up to the largest value in
    # float32: NumPy 1.x compared in float32 (no outlier), a float64 comparison finds one.
    z = torch.tensor(
        [float.fromhex(h) for h in ("0x1.c1968ap-5", "0x1.8d93e2p-4", "0x1.5b0edap-5", "0x1.088ee8p-4",
                                    "0x1.6678bp-5", "0x1.6d452ep-4", "0x1.be5e4ap-5", "0x1.24f10ap-4",
                                    "0x1.edc8a4p-5")],
        dtype=torch.float32,
    )  # fmt: skip
    assert outlier_count(z[None]).tolist() == [0]
    q = torch.quantile(z.double(), torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert int((z.double() > q[1] + 1.5 * (q[1] - q[0])).sum()) == 1


@pytest.mark.parametrize("n", [96, 196, 576, 729])
def test_kept_count_is_int_of_n_times_ratio(n):
    counts = torch.arange(n // 4 + 1)
    assert kept_count(counts, n).tolist() == [int(n * (c / n)) for c in range(n // 4 + 1)]
    if n == 196:
        assert kept_count(torch.tensor([1]), n).item() == 0  # the float round trip loses one


def test_cls_attention_is_softmax_over_all_keys():
    _, queries, keys = make_inputs(2, 10, 4, 8, seed=8)
    full = torch.softmax(queries @ keys.transpose(1, 2) / math.sqrt(8), dim=-1)  # [B, N + 1, N + 1]
    attn = cls_attention(queries, keys)
    assert_close(attn, full[:, 0, 1:])
    assert (attn.sum(-1) < 1).all()  # the CLS key takes its share


# ---------------------------------------------------------------------------------------------
# Layout, extra token, spatial tokens, edge cases
# ---------------------------------------------------------------------------------------------


def test_padded_layout():
    features, queries, keys = make_inputs(4, 96, 24, 32, seed=9)
    merged = prumerge_plus(features, queries, keys)
    b, t, c = merged.tokens.shape
    assert (b, c) == (4, 24) and t == int(merged.lengths.max())
    assert merged.kept_indices.shape == (4, t - 1)
    assert merged.mask.dtype == torch.bool
    assert merged.mask.sum(-1).tolist() == merged.lengths.tolist()
    assert (merged.tokens[~merged.mask] == 0).all()
    assert ((merged.kept_indices >= 0).sum(-1) == merged.lengths - 1).all()
    for row, n in zip(merged.unpad(), merged.lengths.tolist(), strict=True):
        assert row.shape == (n, 24)


@pytest.mark.parametrize("fn", [prumerge, prumerge_plus])
def test_extra_token_is_last_and_sums_the_unselected(fn):
    features, queries, keys = make_inputs(4, 96, 24, 32, seed=10)
    merged = fn(features, queries, keys)
    attn = cls_attention(queries, keys)
    for r, n in enumerate(merged.lengths.tolist()):
        chosen = merged.kept_indices[r, : n - 1]
        rest = torch.ones(96, dtype=torch.bool)
        rest[chosen] = False
        expected = (features[r][rest] * attn[r][rest, None]).sum(0)
        assert_close(merged.tokens[r, n - 1], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampling", ["adallava", "offset"])
def test_prumerge_plus_appends_spatial_tokens(sampling):
    n = 576
    features, queries, keys = make_inputs(3, n, 8, 32, seed=11)
    base = prumerge(features, queries, keys)
    plus = prumerge_plus(features, queries, keys, sampling=sampling)
    counts = outlier_count(cls_attention(queries, keys))
    assert (plus.lengths > base.lengths).all()
    for r in range(3):
        k = int(base.lengths[r]) - 1
        kept = base.kept_indices[r, :k].tolist()
        assert plus.kept_indices[r, :k].tolist() == kept  # same outliers, same order
        step = int(1 / (int(counts[r]) / n))
        start = int(step / 6) if sampling == "offset" else 0
        grid = range(start, 575, int(step / 3))  # the authors' end, 575 for N = 576
        added = plus.kept_indices[r, k : int(plus.lengths[r]) - 1].tolist()
        assert added == [p for p in grid if p not in kept]


# Hand-worked case: N = 40 patches, 4 outliers -> ratio 4/40 = 0.1, step = int(1 / 0.1) = 10,
# stride = int(10 / 3) = 3, and the grid ends before N - 1 = 39 (the authors' 575 for N = 576).
# AdaLLaVA (prumerge_utils.prune_merge_plus): arange(0, 39, 3); LLaVA-PruMerge 9d6586e:
# arange(int(10 / 6) = 1, 39, 3).
HAND_ADALLAVA_GRID = [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36]
HAND_OFFSET_GRID = [1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 34, 37]
HAND_OUTLIERS = [3, 10, 20, 33]  # in descending attention


def hand_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image, N = 40, D = 4: the CLS query [2, 0, 0, 0] makes a patch's score its key's first
    coordinate (2 / sqrt(4) = 1): 3.0, 2.9, 2.8, 2.7 at HAND_OUTLIERS, 0.00-0.06 elsewhere, so exactly
    those four are above Q3 + 1.5 IQR."""
    n = 40
    keys = torch.zeros(1, n + 1, 4)
    keys[0, 1:, 0] = torch.tensor([(p % 7) * 0.01 for p in range(n)])
    for rank, patch in enumerate(HAND_OUTLIERS):
        keys[0, 1 + patch, 0] = 3.0 - 0.1 * rank
    keys[0, 1:, 1] = torch.arange(n) / n  # distinct keys for the neighbour search
    queries = torch.zeros(1, n + 1, 4)
    queries[0, 0, 0] = 2.0
    features = torch.randn(1, n, 6, generator=torch.Generator().manual_seed(0))
    return features, queries, keys


def test_spatial_grids_of_both_variants_by_hand():
    # Bug: PruMerge+ sampling the grid of the wrong authors (a converted *-prumerge-plus checkpoint
    # then sees other visual tokens than it was trained on).
    counts = torch.tensor([4])
    adallava = spatial_mask(counts, 40, sampling="adallava")[0].nonzero().flatten().tolist()
    offset = spatial_mask(counts, 40, sampling="offset")[0].nonzero().flatten().tolist()
    assert adallava == HAND_ADALLAVA_GRID
    assert offset == HAND_OFFSET_GRID
    assert not set(adallava) & set(offset)  # stride 3 and start 1: the grids never meet


def test_prumerge_plus_variants_keep_the_hand_worked_tokens():
    # Bug: 'prumerge+' (the default, and what conversion maps the authors' 'prumerge+' to) not
    # following AdaLLaVA's grid, or the variants differing in their outliers rather than the grid.
    features, queries, keys = hand_inputs()
    assert int(outlier_count(cls_attention(queries, keys))[0]) == 4
    default = prumerge_plus(features, queries, keys)
    offset = prumerge_plus(features, queries, keys, sampling="offset")
    expected_default = HAND_OUTLIERS + [p for p in HAND_ADALLAVA_GRID if p not in HAND_OUTLIERS]
    expected_offset = HAND_OUTLIERS + [p for p in HAND_OFFSET_GRID if p not in HAND_OUTLIERS]
    assert default.kept_indices[0].tolist() == expected_default
    assert offset.kept_indices[0].tolist() == expected_offset
    # The same outliers first; the spatial tokens differ (3 and 33 are outliers and on AdaLLaVA's
    # grid, so it adds 11 patches; 10 is on the offset grid, so that one adds 12).
    assert default.lengths.tolist() == [4 + 11 + 1] and offset.lengths.tolist() == [4 + 12 + 1]
    with pytest.raises(ValueError, match=r"sampling must be one of \('adallava', 'offset'\), got 'llava'"):
        prumerge_plus(features, queries, keys, sampling="llava")


@pytest.mark.parametrize("fn", [prumerge, prumerge_plus])
def test_no_outliers_leaves_only_the_extra_token(fn):
    # Zero queries give uniform attention 1 / (N + 1): IQR = 0, nothing above Q3, ratio 0.
    # Authors: PruMerge keeps int(N * 0) = 0 patches and returns the extra token alone; PruMerge+
    # raises ZeroDivisionError in int(1 / ratio). We return the extra token alone for both.
    features, _, keys = make_inputs(2, 96, 24, 32, seed=12)
    queries = torch.zeros(2, 97, 32)
    merged = fn(features, queries, keys)
    assert merged.lengths.tolist() == [1, 1]
    assert merged.kept_indices.shape == (2, 0)
    assert_close(merged.tokens[:, 0], features.sum(1) / 97)


def test_mixed_batch_with_an_empty_row():
    features, queries, keys = make_inputs(3, 96, 24, 32, seed=13)
    queries[1] = 0  # row 1 has no outliers
    for fn, plus in ((prumerge, False), (prumerge_plus, True)):
        merged = fn(features, queries, keys)
        assert merged.lengths[1] == 1 and merged.lengths[0] > 1
        _assert_matches_reference(merged, reference_prumerge(features, queries, keys, plus=plus))


def test_half_precision_keeps_dtype():
    features, queries, keys = make_inputs(2, 96, 24, 32, seed=14)
    merged = prumerge(features.half(), queries.half(), keys.half())
    assert merged.tokens.dtype == torch.float16


def test_shape_errors_name_the_arguments():
    features, queries, keys = make_inputs(2, 16, 4, 8)
    with pytest.raises(ValueError, match="queries and keys"):
        prumerge(features, queries, keys[:, :-1])
    with pytest.raises(ValueError, match="features"):
        prumerge(features[:, :-1], queries, keys)
