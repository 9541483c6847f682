"""The deterministic scheduler ablation (paper Sec. 3.3 / Table 2): thresholded plans and the latency
loss (expected fraction of the full stack - budget)^2, checked against the formula computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from adallava.core.config import AdaptiveConfig
from adallava.core.cost.shapes import ModelShape, TextShape
from adallava.core.geometry import UnitGeometry
from adallava.core.planning import HeadPlanner, LayerPlanner


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


LAYER_LOGITS = [[0.0, 1.0, -2.0, 3.0], [-1.0, -1.0, 0.5, 2.0], [-4.0, -3.0, -0.5, -0.25]]
FRACTIONS = [0.75, 0.5, 1.0]


# Catches: the latency loss changed (prefix share left out, the mean over switches replaced by a sum,
# the square or the mean over rows dropped, the budget subtracted twice).
def test_layer_latency_loss_is_the_formula():
    n, p = 8, 4
    planner = LayerPlanner(AdaptiveConfig().resolve(n), n, p)
    logits = torch.tensor(LAYER_LOGITS, requires_grad=True)
    fractions = torch.tensor(FRACTIONS, dtype=torch.float64)
    plan, gates, loss = planner.deterministic(logits, fractions, torch.tensor([5, 9, 7]), training=True)
    terms = []
    for row, budget in zip(LAYER_LOGITS, FRACTIONS, strict=True):
        expected = p / n + (1 - p / n) * sum(sigmoid(x) for x in row) / len(row)
        terms.append((expected - budget) ** 2)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)
    # Row 0 by number: (0.5 + 0.5 * mean(0.5, 0.731059, 0.119203, 0.952574) - 0.75)^2 = 0.00158...
    assert terms[0] == pytest.approx((0.5 + 0.5 * (0.5 + 0.7310586 + 0.1192029 + 0.9525741) / 4 - 0.75) ** 2)
    # The threshold, not the budget, decides; training gates are the hard values.
    hard = [[x > 0 for x in row] for row in LAYER_LOGITS]
    assert plan.layers[:, p:].tolist() == hard and plan.layers[:, :p].all()
    torch.testing.assert_close(gates.detach(), torch.tensor(hard, dtype=torch.float32), atol=1e-6, rtol=0)
    loss.backward()
    assert logits.grad.abs().sum() > 0
    assert planner.deterministic(logits, fractions, torch.tensor([5, 9, 7]), training=False)[1] is None


# A Llama-like shape: 2 head units of 2 query heads each (GQA), MLP groups of 17, 17 and 16 neurons.
H, HEADS, KV, D, INTER = 32, 4, 2, 8, 50
TEXT = TextShape(num_layers=4, hidden_size=H, num_heads=HEADS, num_kv_heads=KV, head_dim=D,
                 intermediate_size=INTER, vocab_size=10)  # fmt: skip
GEOMETRY = UnitGeometry(num_heads=HEADS, num_kv_heads=KV, head_dim=D, intermediate_size=INTER, mlp_groups=3)


def head_unit_flops_by_hand(t: int) -> int:
    """One KV head and its 2 query heads over t tokens: q, k, v, o slices and the scores (2 FLOPs/MAC)."""
    q, kv = 2 * D, D
    return 2 * t * H * (q + 2 * kv) + 2 * t * q * H + 2 * 2 * t * t * D * 2


def mlp_group_flops_by_hand(t: int, neurons: int) -> int:
    return 2 * t * H * neurons * 3  # gate, up and down


# Catches: the head version's units weighed equally (not by FLOPs), or its share divided by the full
# stack instead of the upper layers, or the budget rows mixed up.
def test_head_latency_loss_weighs_units_by_their_flops():
    n, p = 4, 2
    adaptive = AdaptiveConfig(switches="head", rank=1, mlp_groups=3, scheduler="deterministic").resolve(n)
    planner = HeadPlanner(adaptive, n, p, GEOMETRY, ModelShape(TEXT))
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, (n - p) * 5, generator=gen) * 2  # per upper layer: 2 head units, 3 groups
    tokens, fractions = [6, 3], [0.6, 0.9]
    _, _, loss = planner.deterministic(
        logits, torch.tensor(fractions, dtype=torch.float64), torch.tensor(tokens), training=True
    )
    terms = []
    for row, (t, budget) in enumerate(zip(tokens, fractions, strict=True)):
        costs = [head_unit_flops_by_hand(t)] * 2 + [mlp_group_flops_by_hand(t, m) for m in (17, 17, 16)]
        costs = costs * (n - p)
        probs = [sigmoid(x) for x in logits[row].tolist()]
        share = sum(pr * c for pr, c in zip(probs, costs, strict=True)) / sum(costs)
        terms.append((p / n + (1 - p / n) * share - budget) ** 2)
    assert loss.item() == pytest.approx(sum(terms) / 2, rel=1e-6)
    unweighted = [(p / n + (1 - p / n) * sum(map(sigmoid, r)) / len(r) - b) ** 2
                  for r, b in zip(logits.tolist(), fractions, strict=True)]  # fmt: skip
    assert sum(unweighted) / 2 != pytest.approx(loss.item(), rel=1e-3)  # the weighting matters here


def test_the_head_latency_loss_has_the_logits_dtype():
    # Bug caught: the loss left in float64 (the cost arithmetic's dtype), which breaks mixed
    # precision training when it is added to a float32/bfloat16 NLL.
    from adallava.core.config import AdaptiveConfig
    from adallava.core.cost.shapes import ModelShape
    from adallava.core.geometry import geometry_of
    from adallava.core.planning import HeadPlanner
    from adallava.testing import tiny_llava_config

    config = tiny_llava_config(num_layers=4)
    adaptive = AdaptiveConfig(switches="head", rank=1).resolve(4)
    planner = HeadPlanner(adaptive, 4, 2, geometry_of(config.text_config, 4), ModelShape.from_config(config))
    logits = torch.zeros(2, planner.num_layers - planner.num_prefix, 8).flatten(1)  # [B, S]
    _, _, loss = planner.deterministic(logits, torch.tensor([0.5, 1.0]), torch.tensor([5, 7]), training=True)
    assert loss.dtype == torch.float32
