import torch

from adallava.core.selection import greedy_mask, gumbel_topk_mask, sample_mask_straight_through


def test_greedy_takes_the_top_k_logits_per_row():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0], [5.0, 4.0, 3.0, 2.0]])
    mask = greedy_mask(logits, torch.tensor([2, 1]))
    assert mask.tolist() == [[False, True, False, True], [True, False, False, False]]


def test_gumbel_topk_is_seeded_and_exact():
    logits = torch.randn(6, 8, generator=torch.Generator().manual_seed(13))
    k = torch.tensor([0, 1, 2, 3, 4, 8])
    first = gumbel_topk_mask(logits, k, generator=torch.Generator().manual_seed(3))
    again = gumbel_topk_mask(logits, k, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert first.sum(-1).tolist() == k.tolist()


def test_straight_through_samples_keep_the_budget_and_pass_gradients():
    logits = torch.randn(5, 6, generator=torch.Generator().manual_seed(14)).requires_grad_()
    k = torch.tensor([0, 1, 3, 5, 6])
    mask = sample_mask_straight_through(logits, k, tau=5.0, generator=torch.Generator().manual_seed(0))
    assert set(mask.detach().flatten().tolist()) <= {0.0, 1.0}
    assert mask.detach().sum(-1).tolist() == k.float().tolist()
    (mask * torch.arange(6.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert torch.all(logits.grad[0] == 0)  # a row that picks nothing gets no gradient


def test_sampling_follows_the_logits():
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0]]).expand(400, 4)
    mask = sample_mask_straight_through(
        logits, torch.ones(400, dtype=torch.long), tau=1.0, generator=torch.Generator().manual_seed(0)
    )
    assert mask[:, 0].mean() > 0.9


def test_gumbel_topk_takes_the_top_k_of_logits_over_tau_plus_the_noise():
    # Bug caught: the noise subtracted (or tau applied to it), which samples from the wrong
    # distribution while still returning k switches. Reference: the Gumbel top-k trick by hand.
    logits = torch.tensor([[2.0, 0.5, -1.0, 1.0, 0.0]])
    k, tau = torch.tensor([2]), 2.0
    mask = gumbel_topk_mask(logits, k, tau=tau, generator=torch.Generator().manual_seed(5))
    uniform = torch.rand(logits.shape, generator=torch.Generator().manual_seed(5)).clamp(1e-10, 1 - 1e-10)
    scores = logits / tau - torch.log(-torch.log(uniform))  # + Gumbel noise
    expected = torch.zeros_like(mask)
    expected[0, scores[0].topk(2).indices] = True
    assert torch.equal(mask, expected)


def test_straight_through_values_are_hard_and_gradients_are_the_probabilities():
    # Bug caught: a sign error in the straight-through trick (hard - p.detach() - p): the forward
    # values stop being 0/1 and the gradient flips.
    from adallava.core.planning import straight_through

    logits = torch.tensor([[1.0, -2.0, 0.3]], requires_grad=True)
    probs, hard, soft = straight_through(logits)
    assert soft.tolist() == hard.float().tolist() == [[1.0, 0.0, 1.0]]
    soft.sum().backward()
    sigmoid = torch.sigmoid(logits.detach())
    assert torch.allclose(logits.grad, sigmoid * (1 - sigmoid))


def test_one_fitting_unit_still_gets_a_gradient():
    # Bug caught: the no-gradient shortcut taken when exactly one switch fits (steps == 1 instead of
    # 0), which would starve the scheduler whenever budgets are tight.
    from adallava.core.selection import sample_fit_straight_through

    logits = torch.tensor([[0.5, 0.1, -0.2]], requires_grad=True)
    costs = torch.tensor([[3.0, 3.0, 3.0]], dtype=torch.float64)
    gates = sample_fit_straight_through(logits, costs, torch.tensor([4.0], dtype=torch.float64), tau=1.0,
                                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert gates.detach().sum().item() == 1.0
    (gates * torch.tensor([1.0, 2.0, 3.0])).sum().backward()  # a softmax's plain sum has no gradient
    assert logits.grad is not None and bool(logits.grad.abs().sum() > 0)


def test_official_rule_uses_its_noise_when_sampling():
    # Bug caught: the official H rule ignoring the Gumbel noise it is given (sampling would then always
    # return the greedy plan). Layer 0 wins greedily; noise on layer 1's first slot moves the pick there.
    from adallava.core.selection import official_head_selection

    logits = torch.zeros(1, 2, 4)  # [B, L, 2H]: 2 upper layers, 2 heads + 2 MLP groups
    logits[0, 0, 0] = 1.0
    units = torch.tensor([1])
    greedy_heads, _ = official_head_selection(logits, units, heads=2, rank=1)
    layer_noise, unit_noise = torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 4)
    layer_noise[0, 0, 1, 0] = 100.0
    heads, mlp = official_head_selection(logits, units, heads=2, rank=1, noise=(layer_noise, unit_noise))
    assert bool(greedy_heads[0, 0].any()) and not bool(greedy_heads[0, 1].any())
    assert not bool(heads[0, 0].any() or mlp[0, 0].any()) and bool(heads[0, 1].any() or mlp[0, 1].any())
