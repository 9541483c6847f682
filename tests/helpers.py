"""Shared checks for the engine tests."""

import torch


def unpadded_row(inputs: dict, row: int) -> dict:
    """Row `row` of a padded batch as a batch of one, padding removed (pixels kept)."""
    real = inputs["attention_mask"][row].bool()
    single = {
        "input_ids": inputs["input_ids"][row][real][None],
        "attention_mask": inputs["attention_mask"][row][real][None],
    }
    if "pixel_values" in inputs:
        single["pixel_values"] = inputs["pixel_values"][row : row + 1]
    return single


def assert_generates_as_one_at_a_time(model, inputs: dict, budgets: list, max_new_tokens: int = 5):
    """Greedy batched generation with per-row budgets equals generating each request alone: same new
    tokens and same plan. Returns the batched output."""
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "return_dict_in_generate": True}
    with torch.no_grad():
        batched = model.generate(**inputs, budget=budgets, **kwargs)
    width = inputs["input_ids"].shape[1]
    for row, budget in enumerate(budgets):
        single = unpadded_row(inputs, row)
        with torch.no_grad():
            alone = model.generate(**single, budget=budget, **kwargs)
        assert torch.equal(batched.sequences[row, width:], alone.sequences[0, single["input_ids"].shape[1] :])
        assert torch.equal(batched.plan.layers[row], alone.plan.layers[0])
        if batched.plan.heads is not None:
            assert torch.equal(batched.plan.heads[row], alone.plan.heads[0])
            assert torch.equal(batched.plan.mlp[row], alone.plan.mlp[0])
    return batched
