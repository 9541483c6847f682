"""The adaptive engine against Hugging Face's own Llava: parity, plans, budgets, generation, training."""

import copy
import math

import pytest
import torch
from torch import nn

from adallava import AdaLlava, AdaptiveConfig, ExecutionPlan
from adallava.modules.latency import IGNORE_INDEX
from adallava.testing import IMAGE_TOKEN_ID, tiny_inputs, tiny_llava
from tests.helpers import assert_generates_as_one_at_a_time

pytestmark = pytest.mark.core  # CI also runs these on the newest allowed dependencies

N = 8  # layers of the tiny model
P = 4


def hf_with_layers(base, layers):
    """Hugging Face's own Llava with only `layers` of its text model kept (the reference for plans)."""
    model = copy.deepcopy(base)
    text = model.model.language_model
    text.layers = nn.ModuleList([text.layers[i] for i in layers])
    text.config.num_hidden_layers = len(layers)
    return model


def test_no_budget_is_the_base_model(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [6, 3, 9], "left", seed=1)
    with torch.no_grad():
        torch.testing.assert_close(ada(**inputs).logits, base_llava(**inputs).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_explicit_plans_equal_hf_with_only_those_layers(base_llava, ada, padding_side):
    executed = [[0, 1, 2, 3, 5], [0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3], [0, 2, 6, 7]]
    inputs = tiny_inputs(base_llava.config, [5, 8, 3, 6], padding_side, seed=2)
    plan = ExecutionPlan.from_layers(N, executed)
    with torch.no_grad():
        logits = ada(**inputs, plan=plan).logits
        for row, layers in enumerate(executed):
            reference = hf_with_layers(base_llava, layers)
            expected = reference(**{k: v[row : row + 1] for k, v in inputs.items()}, use_cache=False).logits
            real = inputs["attention_mask"][row].bool()
            torch.testing.assert_close(logits[row][real], expected[0][real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("budget", [0.5, 0.6, 0.625, 0.75, 0.8, 0.9, 1.0])
def test_budget_buys_floor_n_b_minus_p_upper_layers(base_llava, ada, budget):
    inputs = tiny_inputs(base_llava.config, [4, 7, 5], "right", seed=3)
    with torch.no_grad():
        out = ada(**inputs, budget=budget)
    layers = out.plan.layers
    assert layers[:, :P].all()
    assert layers[:, P:].sum(-1).tolist() == [math.floor(N * budget) - P] * 3


def test_mixed_budgets_in_one_batch(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [4, 7, 5, 6], "left", seed=4)
    with torch.no_grad():
        out = ada(**inputs, budget=torch.tensor([0.5, 0.75, 1.0, 0.875]))
    assert out.plan.layers.sum(-1).tolist() == [4, 6, 8, 7]
    assert out.logits.shape[1] == inputs["input_ids"].shape[1] + 1  # the latency token


def test_plans_depend_on_content(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [3, 4, 5, 6, 7, 8, 9, 10], "left", seed=5)
    with torch.no_grad():
        plans = ada(**inputs, budget=0.75).plan.executed_layers()
    assert len({tuple(p) for p in plans}) > 1


def forced_order_model(base, adaptive: AdaptiveConfig, seed: int) -> AdaLlava:
    """A model of its own whose scheduler logits are a fixed, widely spaced order (bias only): the
    training sample (logits + Gumbel noise, noise far below the gaps) then equals the greedy plan."""
    model = AdaLlava.from_base(copy.deepcopy(base), adaptive)
    order = torch.randperm(model.scheduler.head.bias.numel(), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model.scheduler.head.weight.zero_()
        model.scheduler.head.bias.copy_(100.0 * order.float())
    return model


def gated_and_skipped(model, inputs, budgets):
    """(training forward: plan sampled, layers gated; inference forward: plan chosen, layers skipped)."""
    model.train()
    try:
        gated = model(**inputs, budget=budgets, generator=torch.Generator().manual_seed(0))
    finally:
        model.eval()
    with torch.no_grad():
        skipped = model(**inputs, budget=budgets)
    return gated, skipped


# Catches: training gates applied to the wrong rows (or the wrong upper layer), and gates that are not
# exact identities for off layers: the gated training forward must equal the skipping forward.
def test_training_gates_equal_inference_skipping_for_the_same_plan(base_llava):
    model = forced_order_model(base_llava, AdaptiveConfig(), seed=0)
    bias = model.scheduler.head.bias.detach()
    inputs = tiny_inputs(base_llava.config, [5, 8, 3, 7, 6], "right", seed=6)
    budgets = [0.625, 1.0, 0.875, 0.5, 0.75]  # 1, 4, 3, 0, 2 upper layers: every row differs
    gated, skipped = gated_and_skipped(model, inputs, budgets)
    ranked = (P + bias.argsort(descending=True)).tolist()  # upper layers by logit, by hand
    expected = [sorted(range(P)) + sorted(ranked[:k]) for k in (1, 4, 3, 0, 2)]
    assert gated.plan.executed_layers() == skipped.plan.executed_layers() == expected
    real = skipped.attention_mask.bool()
    torch.testing.assert_close(gated.logits.detach()[real], skipped.logits[real], atol=1e-5, rtol=0)


def test_seeded_plan_sampling_is_reproducible(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [5, 8, 4], "left", seed=7)
    with torch.no_grad():
        a = ada(**inputs, budget=0.75, sample_plan=True, generator=torch.Generator().manual_seed(11)).plan
        b = ada(**inputs, budget=0.75, sample_plan=True, generator=torch.Generator().manual_seed(11)).plan
    assert torch.equal(a.layers, b.layers)
    assert a.layers.sum(-1).tolist() == [6, 6, 6]


# ---- generation -----------------------------------------------------------------------------------


def next_token(logits):
    """Greedy choice as `generate` makes it on the tiny models (the image placeholder is suppressed)."""
    logits = logits[:, -1].clone()
    logits[:, IMAGE_TOKEN_ID] = float("-inf")
    return logits.argmax(-1)


def greedy(ada, inputs, **kwargs):
    with torch.no_grad():
        return ada.generate(
            **inputs, max_new_tokens=6, do_sample=False, return_dict_in_generate=True, **kwargs
        )


def test_generation_without_budget_equals_hf(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [5, 8], "left", seed=8)
    with torch.no_grad():
        expected = base_llava.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(greedy(ada, inputs).sequences, expected)


def test_cached_generation_equals_uncached_recomputation(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [6, 9], "left", seed=9)
    budgets = [0.625, 0.875]
    out = greedy(ada, inputs, budget=budgets)
    prompt_length = inputs["input_ids"].shape[1]
    sequences = out.sequences
    for step in range(prompt_length, sequences.shape[1]):
        ids = sequences[:, :step]
        mask = torch.cat([inputs["attention_mask"], torch.ones(2, step - prompt_length, dtype=torch.long)], 1)
        # Labels mark the generated tokens as the answer, so the latency token sits after the prompt.
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[:, prompt_length:] = ids[:, prompt_length:]
        with torch.no_grad():
            full = ada(
                input_ids=ids,
                attention_mask=mask,
                pixel_values=inputs["pixel_values"],
                labels=labels,
                budget=budgets,
                use_cache=False,
            )
        assert torch.equal(full.plan.layers, out.plan.layers)
        assert torch.equal(next_token(full.logits), sequences[:, step])


def test_cached_generation_with_a_plan_equals_uncached(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [6, 9], "left", seed=10)
    plan = ExecutionPlan.from_layers(N, [[0, 1, 2, 3, 6], [0, 1, 2, 3, 4, 5, 7]])
    out = greedy(ada, inputs, plan=plan)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    for _ in range(6):
        with torch.no_grad():
            logits = ada(
                input_ids=ids,
                attention_mask=mask,
                pixel_values=inputs["pixel_values"],
                plan=plan,
                use_cache=False,
            ).logits
        ids = torch.cat([ids, next_token(logits)[:, None]], 1)
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    assert torch.equal(out.sequences, ids)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_generation_with_mixed_budgets_equals_one_at_a_time(base_llava, ada, padding_side):
    inputs = tiny_inputs(base_llava.config, [3, 9, 5, 7], padding_side, seed=12)
    batched = assert_generates_as_one_at_a_time(ada, inputs, [0.5, 1.0, 0.75, 0.625], max_new_tokens=6)
    # The prompt part of the returned sequences is the input as given.
    assert torch.equal(batched.sequences[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_generation_reports_the_prefill_plan(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [5, 8], "left", seed=13)
    out = greedy(ada, inputs, budget=[0.5, 0.875])
    with torch.no_grad():
        forward_plan = ada(**inputs, budget=[0.5, 0.875]).plan
    assert torch.equal(out.plan.layers, forward_plan.layers)
    assert out.budget.tolist() == [0.5, 0.875]


def test_generate_plain_tensor_output(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [5, 8], "left", seed=14)
    with torch.no_grad():
        ids = ada.generate(**inputs, budget=0.75, max_new_tokens=3, do_sample=False)
    assert ids.shape == (2, inputs["input_ids"].shape[1] + 3)


def test_sampling_generation_is_seeded(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [5, 8], "left", seed=15)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        with torch.no_grad():
            runs.append(ada.generate(**inputs, budget=0.75, max_new_tokens=5, do_sample=True, top_k=20))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs(base_llava, dtype):
    model = AdaLlava.from_base(copy.deepcopy(base_llava).to(dtype), AdaptiveConfig()).eval()
    inputs = tiny_inputs(base_llava.config, [5, 8], "left", seed=16)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    with torch.no_grad():
        out = model(**inputs, budget=[0.5, 0.75])
        ids = model.generate(**inputs, budget=[0.5, 0.75], max_new_tokens=3, do_sample=False)
    assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
    assert out.plan.layers.sum(-1).tolist() == [4, 6]
    assert ids.shape[1] == inputs["input_ids"].shape[1] + 3


# ---- training -----------------------------------------------------------------------------------


def training_batch(config, seed):
    inputs = tiny_inputs(config, [6, 9, 4, 7], "right", seed=seed)
    labels = inputs["input_ids"].clone()
    labels[inputs["attention_mask"] == 0] = IGNORE_INDEX
    labels[:, : config.image_seq_length + 2] = IGNORE_INDEX  # image + first prompt tokens are the prompt
    return inputs, labels


def test_training_step_reaches_scheduler_encoder_and_llm(base_llava):
    model = AdaLlava.from_base(copy.deepcopy(base_llava), AdaptiveConfig()).train()
    inputs, labels = training_batch(base_llava.config, seed=17)
    torch.manual_seed(0)
    out = model(**inputs, labels=labels, budget=torch.tensor([0.625, 0.75, 0.875, 0.75]))
    out.loss.backward()
    grads = {
        "scheduler": model.scheduler.head.weight.grad,
        "latency_encoder": model.latency_encoder.net[1].weight.grad,
        "llm upper layer": model.llava.model.language_model.layers[6].mlp.down_proj.weight.grad,
        "llm prefix layer": model.llava.model.language_model.layers[0].self_attn.q_proj.weight.grad,
    }
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name


def test_a_few_steps_lower_the_loss(base_llava):
    model = AdaLlava.from_base(copy.deepcopy(base_llava), AdaptiveConfig()).train()
    inputs, labels = training_batch(base_llava.config, seed=18)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(12):
        budget = torch.randint(P, N + 1, (4,), generator=generator) / N  # uniform over units, as the paper
        loss = model(**inputs, labels=labels, budget=budget, generator=generator).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3


# ---- save / load ----------------------------------------------------------------------------------


def test_save_load_round_trip(base_llava, ada, tmp_path):
    ada.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")) and (tmp_path / "adaptive.safetensors").is_file()
    loaded = AdaLlava.from_pretrained(tmp_path, attn_implementation="eager")
    assert loaded.adaptive == ada.adaptive
    inputs = tiny_inputs(base_llava.config, [5, 8, 3], "left", seed=19)
    with torch.no_grad():
        a, b = ada(**inputs, budget=[0.5, 0.75, 0.875]), loaded(**inputs, budget=[0.5, 0.75, 0.875])
        torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
        assert torch.equal(a.plan.layers, b.plan.layers)
        torch.testing.assert_close(ada(**inputs).logits, loaded(**inputs).logits, atol=0, rtol=0)


def test_the_checkpoint_is_still_a_hf_llava(base_llava, ada, tmp_path):
    from transformers import LlavaForConditionalGeneration

    ada.save_pretrained(tmp_path)
    plain = LlavaForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").eval()
    inputs = tiny_inputs(base_llava.config, [5], "left", seed=20)
    with torch.no_grad():
        torch.testing.assert_close(plain(**inputs).logits, base_llava(**inputs).logits, atol=0, rtol=0)


def test_loading_a_plain_llava_folder_says_what_to_do(base_llava, tmp_path):
    base_llava.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="from_base"):
        AdaLlava.from_pretrained(tmp_path)


# ---- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "budget",
    [
        0.3,
        1.2,
        -1.0,
        float("nan"),
        float("inf"),
        [0.5, 0.7, 0.9],
        [0.5, float("nan")],
        torch.tensor([[0.5, 0.6]]),
        "fast",
        None.__class__,
    ],
)
def test_bad_budgets_raise_clear_errors(base_llava, ada, budget):
    inputs = tiny_inputs(base_llava.config, [5, 8], "left", seed=21)
    with pytest.raises(ValueError, match="budget") as error, torch.no_grad():
        ada(**inputs, budget=budget)
    message = str(error.value)
    if isinstance(budget, float) and budget > 0 and not math.isinf(budget):
        assert "[0.5, 1]" in message  # the allowed range is named


def test_bad_plans_raise_clear_errors(base_llava, ada):
    inputs = tiny_inputs(base_llava.config, [5, 8], "left", seed=22)
    with torch.no_grad():
        with pytest.raises(ValueError, match="layer 0"):
            ada(**inputs, plan=ExecutionPlan.from_layers(N, [[1, 2], [0, 1]]))
        with pytest.raises(ValueError, match="covers 6 layers"):
            ada(**inputs, plan=ExecutionPlan.from_layers(6, [[0], [0]]))
        with pytest.raises(ValueError, match="either a budget"):
            ada(**inputs, budget=0.5, plan=ExecutionPlan.full(2, N))
        with pytest.raises(ValueError, match="outside"):
            ExecutionPlan.from_layers(N, [[0, 9]])


def test_bad_adaptive_config_names_the_field(base_llava):
    with pytest.raises(ValueError, match="switches"):
        AdaptiveConfig(switches="block")
    with pytest.raises(ValueError, match=r"num_prefix_layers must be in \[1, 7\]"):
        AdaLlava.from_base(base_llava, AdaptiveConfig(num_prefix_layers=8))


def test_deterministic_scheduler_trains_and_may_violate(base_llava):
    """The paper's ablation: hard thresholded plans, NLL + lambda * (cost - budget)^2; budgets are not
    enforced (the point of the comparison), and the latency loss reaches the scheduler."""
    model = AdaLlava.from_base(copy.deepcopy(base_llava), AdaptiveConfig(scheduler="deterministic")).train()
    inputs, labels = training_batch(base_llava.config, seed=23)
    budgets = torch.tensor([0.5, 0.625, 0.75, 1.0])
    with torch.no_grad():
        model.scheduler.head.bias.fill_(5.0)  # every switch on: violates every budget below 1
    nll_only = model(**inputs, labels=labels, plan=ExecutionPlan.full(4, N)).loss
    out = model(**inputs, labels=labels, budget=budgets)
    assert out.plan.layers.all()  # the threshold, not the budget, decides
    assert out.loss > nll_only  # the latency penalty is added
    out.loss.backward()
    assert model.scheduler.head.bias.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        evaluated = model(**inputs, budget=budgets)
    violations = (evaluated.cost.llm > budgets.double() * evaluated.full_cost.llm * (1 + 1e-9)).sum()
    assert violations == 3


# Catches: the deterministic scheduler's latency loss added without its weight, or a latency loss
# that is not the formula of the logits the scheduler produced.
def test_deterministic_loss_adds_the_weighted_latency_loss(base_llava):
    inputs, labels = training_batch(base_llava.config, seed=24)
    budgets = torch.tensor([0.5, 0.625, 0.75, 1.0])
    losses, logits = [], None
    for weight in (0.0, 2.5):
        torch.manual_seed(5)  # the same adaptive weights for both models
        model = AdaLlava.from_base(
            copy.deepcopy(base_llava), AdaptiveConfig(scheduler="deterministic", latency_loss_weight=weight)
        ).train()
        out = model(**inputs, labels=labels, budget=budgets)
        losses.append(out.loss.item())
        logits = out.scheduler_logits.detach().double()
    # By hand: mean over rows of (P/N + (1 - P/N) * mean(sigmoid(logits)) - b)^2
    expected = ((P / N + (1 - P / N) * torch.sigmoid(logits).mean(-1) - budgets.double()) ** 2).mean()
    assert losses[1] - losses[0] == pytest.approx(2.5 * expected.item(), rel=1e-4, abs=1e-6)
    assert expected.item() > 1e-3  # the penalty is not negligible here


def test_official_selection_buys_units_with_the_authors_arithmetic():
    # Bug caught: converted checkpoints (selection="official") planning with our tolerant rule instead
    # of the authors' floor in the model's dtype: at 0.57 of 100 units, float64 gives floor(56.99...) =
    # 56 (6 upper units over P = 50), float32 rounds 0.57 * 100 to 57 (7 units), ours always 7.
    base = tiny_llava(num_layers=100, hidden_size=16, num_heads=2, intermediate_size=32, seed=0)
    official = AdaLlava.from_base(base, AdaptiveConfig(num_prefix_layers=50, selection="official"))
    ours = AdaLlava.from_base(base, AdaptiveConfig(num_prefix_layers=50))
    fractions = torch.tensor([0.57], dtype=torch.float64)
    assert ours.units_for(fractions).tolist() == [7]
    assert official.units_for(fractions).tolist() == [7]  # float32 weights
    assert official.to(torch.float64).units_for(fractions).tolist() == [6]
