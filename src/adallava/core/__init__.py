"""Pure math and policy: configs, plans, budgets, plan and token selection, the cost model (no
nn.Module, no Hugging Face model)."""
