"""Reports of evaluation runs: RESULTS.md tables (`results`) and plots (`plots`), from saved
results only (nothing here runs a model)."""

# Old `adallava.report` names, until every caller imports adallava.report.results.
from adallava.report.results import build_report, load_rows, plan_files, write_plots  # noqa: E402,F401
