"""Reports of evaluation runs: RESULTS.md tables (`results`) and plots (`plots`), from saved
results only (nothing here runs a model)."""
