"""The budget forward against an independent reference built from Hugging Face's own Llava.

For each row alone: HF's own merged embeddings (image features scattered by HF), the latency token
(`model.latency_encoder` on the unit count computed here by hand) appended after the prompt
(DESIGN.md: right after the prompt; positions continue), the scheduler read at the input of layer
P from HF's own hidden states, the top-k layers picked here by hand, and HF's Llava with only those
layers (tests.engine.test_decoder.hf_with_layers). Nothing of adallava's budget path is reused.
"""

import math

import pytest
import torch

from adallava.modules.latency import IGNORE_INDEX
from adallava.testing import tiny_inputs
from tests.engine.test_decoder import hf_with_layers
from tests.helpers import unpadded_row

pytestmark = pytest.mark.core

N, P = 8, 4


def hf_embeddings(base, single: dict) -> torch.Tensor:
    """The inputs_embeds HF's Llava hands its language model (image features already scattered)."""
    captured = {}

    def grab(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"].detach().clone()

    handle = base.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        base(**single, use_cache=False)
    finally:
        handle.remove()
    return captured["embeds"]  # [1, T, D]


def reference_row(base, model, single: dict, budget: float, at: int | None = None):
    """(layers run, logits [T+1, V]) of one unpadded row under `budget`, computed from HF parts; the
    latency token goes at position `at` (default: after the whole row, i.e. after the prompt)."""
    embeds = hf_embeddings(base, single)
    at = embeds.shape[1] if at is None else at
    units = max(0, math.floor(N * budget + 1e-9) - P)  # n = floor(N b) - P (DESIGN.md)
    token = model.latency_encoder(torch.tensor([units]), N, P)  # [1, D]
    embeds = torch.cat([embeds[:, :at], token[:, None].to(embeds.dtype), embeds[:, at:]], dim=1)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    states = base.model.language_model(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True)
    latency_state = states.hidden_states[P][0, at]  # input of layer P at the latency token
    logits = model.scheduler.head(latency_state)  # [N - P]
    upper = sorted((P + logits.topk(units).indices).tolist()) if units else []
    layers = list(range(P)) + upper
    reference = hf_with_layers(base, layers)
    out = reference(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits[0]
    return layers, out


# Catches: the latency token placed at the wrong position (before the prompt's end, or after right
# padding), wrong position ids after it, the scheduler read at the wrong layer or position, the
# latency encoder fed the fraction instead of the unit count, plans applied to the wrong rows.
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_budget_forward_equals_hf_with_the_latency_token_and_only_the_planned_layers(
    base_llava, ada, padding_side
):
    lengths, budgets = [5, 9, 3, 7], [0.5, 0.875, 1.0, 0.625]
    inputs = tiny_inputs(base_llava.config, lengths, padding_side, seed=31)
    width = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = ada(**inputs, budget=budgets)
        for row, budget in enumerate(budgets):
            single = unpadded_row(inputs, row)
            real = single["input_ids"].shape[1]  # image + text tokens of this row
            layers, expected = reference_row(base_llava, ada, single, budget)
            assert out.plan.executed_layers()[row] == layers
            # The row's real positions in the batch: its tokens and the latency token after them.
            start = width - real if padding_side == "left" else 0
            got = out.logits[row, start : start + real + 1]
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert [len(layers) for layers in out.plan.executed_layers()] == [4, 7, 8, 5]


# Catches: with labels (training), the latency token not placed right after the prompt, i.e. after the
# last position whose label is ignored and before the answer (DESIGN.md, the official placement).
def test_with_labels_the_token_goes_between_prompt_and_answer(base_llava, ada):
    lengths, budgets = [6, 9, 4], [0.75, 0.5, 1.0]
    inputs = tiny_inputs(base_llava.config, lengths, "right", seed=32)
    prompt = base_llava.config.image_seq_length + 2  # image and two text tokens; the rest is the answer
    labels = inputs["input_ids"].clone()
    labels[:, :prompt] = IGNORE_INDEX
    labels[inputs["attention_mask"] == 0] = IGNORE_INDEX
    with torch.no_grad():
        out = ada(**inputs, labels=labels, budget=budgets)
        for row, budget in enumerate(budgets):
            single = unpadded_row(inputs, row)
            real = single["input_ids"].shape[1]
            layers, expected = reference_row(base_llava, ada, single, budget, at=prompt)
            assert out.plan.executed_layers()[row] == layers
            torch.testing.assert_close(out.logits[row, : real + 1], expected, atol=1e-5, rtol=0)
    assert out.latency_positions.tolist() == [prompt] * 3
