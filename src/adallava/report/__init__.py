"""Reports of evaluation runs: reading results folders (`folders`), RESULTS.md tables (`results`) and
plots (`plots`), from saved results only (nothing here runs a model)."""
