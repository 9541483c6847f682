"""Data: the synthetic world, LLaVA-format conversation datasets and their collator."""
