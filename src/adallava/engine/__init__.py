"""The adaptive engine: HF decoder layers run under per-row switches, AdaLlava and AdaLLM,
and the one seam to transformers internals (`hf_compat`)."""
