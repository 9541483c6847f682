# Shortcuts; each target is one documented script.
.PHONY: setup test bundled results

setup:
	bash scripts/setup.sh

test:  # the README's test command
	bash scripts/setup.sh && .venv/bin/python -m ruff check . && .venv/bin/python -m pytest -q

bundled:  # rebuild the four bundled models from scratch, resumable (109 min from a fresh clone on 2 idle cores; docs/training.md)
	bash scripts/build_bundled.sh

results:  # RESULTS.md from the bundled models on the synthetic world
	bash scripts/make_results.sh
