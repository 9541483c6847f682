"""The lean inference engine: prefill and decode computed functionally from the HF modules' own
weights, with preallocated per-plan-group caches and per-request tables (see `runner`)."""
